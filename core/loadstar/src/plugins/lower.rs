//! The policy snapshot's argument, lowered into the guest faster than the generated code does.
//!
//! wasmtime 48's generated lowering looks the guest memory up again for every primitive it
//! stores (`LowerContext::get`), about 26 times per `evse-state` record: the dominant cost of a
//! policy call with many EVSEs (BENCHMARKS.md, "Plugin host"). [`Evses`] lowers
//! `list<evse-state>` with the guest allocations the canonical ABI prescribes (the list, then
//! each record's `id` and `node` through `cabi_realloc`, in that order) and then writes every
//! record and string with one memory lookup. The bytes are the canonical ABI's, so the
//! `loadstar:plugin@0.1.0` contract is unchanged; the typecheck is the generated type's.
//!
//! This implements wasmtime's `ComponentType`/`Lower` traits by hand, whose hidden items are
//! internal to wasmtime: re-check this file (the layout test below and the host tests that pass
//! snapshots through a guest) when moving off wasmtime 48.

use std::mem::MaybeUninit;

use wasmtime::ValRaw;
use wasmtime::component::__internal::{
    CanonicalAbiInfo, InstanceType, InterfaceType, LowerContext,
};
use wasmtime::component::{ComponentType, Lower};

use super::wit;

/// `site-snapshot` as the guest sees it, borrowing the host's snapshot; only `evses` is
/// lowered by hand.
#[derive(ComponentType, Lower)]
#[component(record)]
pub(super) struct SnapshotArg<'a> {
    now: i64,
    #[component(name = "time-zone")]
    time_zone: &'a str,
    #[component(name = "nominal-voltage")]
    nominal_voltage: f64,
    nodes: &'a [wit::Node],
    evses: Evses<'a>,
    meters: &'a [wit::MeterReading],
    prices: &'a [wit::PriceSlot],
    solar: &'a [wit::SolarSlot],
}

impl<'a> SnapshotArg<'a> {
    pub(super) fn new(s: &'a wit::SiteSnapshot) -> Self {
        SnapshotArg {
            now: s.now,
            time_zone: &s.time_zone,
            nominal_voltage: s.nominal_voltage,
            nodes: &s.nodes,
            evses: Evses(&s.evses),
            meters: &s.meters,
            prices: &s.prices,
            solar: &s.solar,
        }
    }
}

/// `list<evse-state>`, lowered with one memory lookup.
pub(super) struct Evses<'a>(&'a [wit::EvseState]);

// The canonical ABI layout of `evse-state` (memory32): byte offsets of its fields.
const ID: usize = 0; // string: pointer, length (u32 each)
const NODE: usize = 8; // string
const STATUS: usize = 16; // enum of 10 cases: u8
const SESSION_ACTIVE: usize = 17; // bool: u8
const MIN_CURRENT: usize = 24; // f64
const MAX_CURRENT: usize = 32; // f64
const SETPOINT: usize = 40; // option<f64>: u8 case, f64 payload at +8 (16 bytes)
const MEASURED: usize = 56; // per-line: three option<f64> (48 bytes)
const SESSION_ENERGY: usize = 104; // option<f64>
/// Size and alignment of one record.
const RECORD: usize = 120;
const ALIGN: u32 = 8;
/// The canonical ABI's longest string (bytes).
const MAX_STRING: usize = (1 << 31) - 1;

// SAFETY: the same ABI and typecheck as `[wit::EvseState]` (so a `TypedFunc` using this type
// accepts exactly the components the generated one accepts), and `Lower` writes that type's
// canonical ABI representation (asserted by `layout_is_the_canonical_abis` below).
unsafe impl ComponentType for Evses<'_> {
    type Lower = [ValRaw; 2];
    const ABI: CanonicalAbiInfo = <[wit::EvseState] as ComponentType>::ABI;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <[wit::EvseState] as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: see `ComponentType` above; every write is bounds-checked against guest memory.
unsafe impl Lower for Evses<'_> {
    fn linear_lower_to_flat<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        _ty: InterfaceType,
        dst: &mut MaybeUninit<[ValRaw; 2]>,
    ) -> wasmtime::Result<()> {
        let (ptr, len) = self.store(cx)?;
        // Pointers are passed as i64 in flat form, as wasmtime's own lowering does.
        dst.write([ValRaw::i64(ptr as i64), ValRaw::i64(len as i64)]);
        Ok(())
    }

    fn linear_lower_to_memory<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        _ty: InterfaceType,
        offset: usize,
    ) -> wasmtime::Result<()> {
        let (ptr, len) = self.store(cx)?;
        *cx.get::<4>(offset) = u32::try_from(ptr)?.to_le_bytes();
        *cx.get::<4>(offset + 4) = u32::try_from(len)?.to_le_bytes();
        Ok(())
    }
}

impl Evses<'_> {
    /// Allocates the list and its strings in the guest, then writes them all. Returns the
    /// list's pointer and length.
    fn store<T>(&self, cx: &mut LowerContext<'_, T>) -> wasmtime::Result<(usize, usize)> {
        let evses = self.0;
        let size = evses
            .len()
            .checked_mul(RECORD)
            .ok_or_else(|| wasmtime::format_err!("size overflow copying a list"))?;
        let list = cx.realloc(0, 0, ALIGN, size)?;
        // Guest pointers of each record's id and node, allocated in the generated code's order.
        let mut strings = Vec::with_capacity(evses.len() * 2);
        for e in evses {
            for s in [&e.id, &e.node] {
                if s.len() > MAX_STRING {
                    wasmtime::bail!("string length of {} too large to copy into wasm", s.len());
                }
                strings.push(cx.realloc(0, 0, 1, s.len())?);
            }
        }
        // `realloc` checked every block against the memory, which never shrinks; checked again
        // here rather than trusted.
        let memory = cx.as_slice_mut();
        let out_of_bounds = || wasmtime::format_err!("realloc return: beyond end of memory");
        let records = memory
            .get_mut(list..)
            .and_then(|m| m.get_mut(..size))
            .ok_or_else(out_of_bounds)?;
        for ((e, record), at) in evses
            .iter()
            .zip(records.chunks_exact_mut(RECORD))
            .zip(strings.chunks_exact(2))
        {
            record.fill(0);
            put_str(record, ID, at[0], &e.id)?;
            put_str(record, NODE, at[1], &e.node)?;
            record[STATUS] = status(e.status);
            record[SESSION_ACTIVE] = u8::from(e.session_active);
            put_f64(record, MIN_CURRENT, e.min_current);
            put_f64(record, MAX_CURRENT, e.max_current);
            put_opt(record, SETPOINT, e.setpoint);
            put_opt(record, MEASURED, e.measured.l1);
            put_opt(record, MEASURED + 16, e.measured.l2);
            put_opt(record, MEASURED + 32, e.measured.l3);
            put_opt(record, SESSION_ENERGY, e.session_energy);
        }
        for (e, at) in evses.iter().zip(strings.chunks_exact(2)) {
            for (s, &ptr) in [&e.id, &e.node].into_iter().zip(at) {
                memory
                    .get_mut(ptr..)
                    .and_then(|m| m.get_mut(..s.len()))
                    .ok_or_else(out_of_bounds)?
                    .copy_from_slice(s.as_bytes());
            }
        }
        Ok((list, evses.len()))
    }
}

fn put_str(record: &mut [u8], at: usize, ptr: usize, s: &str) -> wasmtime::Result<()> {
    record[at..at + 4].copy_from_slice(&u32::try_from(ptr)?.to_le_bytes());
    record[at + 4..at + 8].copy_from_slice(&u32::try_from(s.len())?.to_le_bytes());
    Ok(())
}

fn put_f64(record: &mut [u8], at: usize, v: f64) {
    record[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn put_opt(record: &mut [u8], at: usize, v: Option<f64>) {
    if let Some(v) = v {
        record[at] = 1;
        put_f64(record, at + 8, v);
    }
}

/// The enum's case index, in the WIT's order.
fn status(s: wit::EvseStatus) -> u8 {
    use wit::EvseStatus as S;
    match s {
        S::Available => 0,
        S::Preparing => 1,
        S::Charging => 2,
        S::SuspendedEv => 3,
        S::SuspendedEvse => 4,
        S::Finishing => 5,
        S::Reserved => 6,
        S::Unavailable => 7,
        S::Faulted => 8,
        S::Unknown => 9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The offsets above are what the canonical ABI gives `evse-state`'s fields, computed from
    /// the generated types' own ABI info, field by field in WIT order.
    #[test]
    fn layout_is_the_canonical_abis() {
        let mut offset = 0u32;
        let fields = [
            <String as ComponentType>::ABI,
            <String as ComponentType>::ABI,
            <wit::EvseStatus as ComponentType>::ABI,
            <bool as ComponentType>::ABI,
            <f64 as ComponentType>::ABI,
            <f64 as ComponentType>::ABI,
            <Option<f64> as ComponentType>::ABI,
            <wit::PerLine as ComponentType>::ABI,
            <Option<f64> as ComponentType>::ABI,
        ];
        let at: Vec<usize> = fields
            .iter()
            .map(|abi| abi.next_field32(&mut offset) as usize)
            .collect();
        assert_eq!(
            at,
            [
                ID,
                NODE,
                STATUS,
                SESSION_ACTIVE,
                MIN_CURRENT,
                MAX_CURRENT,
                SETPOINT,
                MEASURED,
                SESSION_ENERGY
            ]
        );
        let record = <wit::EvseState as ComponentType>::ABI;
        assert_eq!(record.size32 as usize, RECORD);
        assert_eq!(record.align32, ALIGN);
        assert_eq!(<wit::EvseStatus as ComponentType>::ABI.size32, 1);
        assert_eq!(<Option<f64> as ComponentType>::ABI.size32, 16);
        assert_eq!(<wit::PerLine as ComponentType>::ABI.size32, 48);
        assert_eq!(
            <Evses<'_> as ComponentType>::ABI,
            <Vec<wit::EvseState> as ComponentType>::ABI
        );
    }
}
