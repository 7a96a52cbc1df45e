//! The SDK for Loadstar plugins: WebAssembly components (`wasm32-wasip2`) that teach Loadstar a
//! meter or a site policy.
//!
//! A plugin implements one world. Enable the matching feature (`meter` or `policy`), implement
//! the trait ([`Meter`] or [`Policy`]) and register it:
//!
//! ```ignore
//! use loadstar_plugin_sdk::{Meter, Reading, register_meter};
//!
//! struct Fixed;
//! impl Meter for Fixed {
//!     fn new() -> Result<Self, String> { Ok(Fixed) }
//!     fn read(&mut self) -> Result<Reading, String> {
//!         Ok(Reading { total_power: Some(1200.0), ..Reading::default() })
//!     }
//! }
//! register_meter!(Fixed);
//! ```
//!
//! The host calls `new` once per instance (again after a restart) and then `read` or `evaluate`
//! each tick. The host functions ([`log`], [`clock`], [`config`], [`kv`], [`http`], [`modbus`])
//! only reach what the site file grants; anything else comes back as [`HostError::Denied`].
//!
//! Units: amps per grid line, W, Wh, V, and milliseconds since the Unix epoch (UTC).
//! The helpers ([`sunspec`], [`json`], [`slots`]) work on any target.

pub mod json;
pub mod slots;
pub mod sunspec;

/// Re-exported so a plugin can parse its config and payloads without its own dependency.
pub use serde_json;

#[cfg(all(feature = "meter", feature = "policy"))]
compile_error!(
    "loadstar-plugin-sdk: enable exactly one of the features `meter` and `policy` (a plugin \
     implements one world; build workspace members one at a time with `-p`)"
);

// The generated code names the SDK by its crate name, also from inside the SDK.
#[cfg(any(feature = "meter", feature = "policy"))]
extern crate self as loadstar_plugin_sdk;

#[doc(hidden)]
#[cfg(any(feature = "meter", feature = "policy"))]
pub use wit_bindgen as __wit_bindgen;

/// The wit-bindgen output. Not part of the SDK's API: use the re-exports and wrappers.
#[doc(hidden)]
#[cfg(all(feature = "meter", not(feature = "policy")))]
#[allow(clippy::too_many_arguments)] // generated lowering code
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/loadstar-plugin@0.1.0",
        world: "meter",
        pub_export_macro: true,
        export_macro_name: "__export_meter",
        default_bindings_module: "loadstar_plugin_sdk::bindings",
        runtime_path: "loadstar_plugin_sdk::__wit_bindgen::rt",
    });
}

/// The wit-bindgen output. Not part of the SDK's API: use the re-exports and wrappers.
#[doc(hidden)]
#[cfg(all(feature = "policy", not(feature = "meter")))]
#[allow(clippy::too_many_arguments)] // generated lowering code
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/loadstar-plugin@0.1.0",
        world: "policy",
        pub_export_macro: true,
        export_macro_name: "__export_policy",
        default_bindings_module: "loadstar_plugin_sdk::bindings",
        runtime_path: "loadstar_plugin_sdk::__wit_bindgen::rt",
    });
}

#[cfg(any(feature = "meter", feature = "policy"))]
mod host;
#[cfg(any(feature = "meter", feature = "policy"))]
pub use host::*;

#[cfg(any(feature = "meter", feature = "policy"))]
pub use bindings::loadstar::plugin::types::{HostError, PerLine, Reading};

#[cfg(feature = "policy")]
pub use bindings::loadstar::plugin::types::{
    Constraints, EvseHint, EvseState, EvseStatus, LimitSlot, MeterReading, Node, PriceForecast,
    PriceSlot, SiteSnapshot, SolarSlot, SolarSurplus,
};

// Not derivable through wit-bindgen: `additional_derives` would ask Default of every type.
#[cfg(any(feature = "meter", feature = "policy"))]
#[allow(clippy::derivable_impls)]
impl Default for PerLine {
    fn default() -> Self {
        PerLine {
            l1: None,
            l2: None,
            l3: None,
        }
    }
}

#[cfg(any(feature = "meter", feature = "policy"))]
#[allow(clippy::derivable_impls)]
impl Default for Reading {
    fn default() -> Self {
        Reading {
            timestamp: None,
            current: PerLine::default(),
            voltage: PerLine::default(),
            power: PerLine::default(),
            total_power: None,
            energy_import: None,
            energy_export: None,
        }
    }
}

/// A meter plugin (feature `meter`).
#[cfg(feature = "meter")]
pub trait Meter: Sized + 'static {
    /// Called once per instance, before the first read: parse the config here. An error is
    /// returned from every read until an instance succeeds (the host restarts it with backoff).
    fn new() -> Result<Self, String>;
    /// One reading of the meter.
    fn read(&mut self) -> Result<Reading, String>;
}

/// A policy plugin (feature `policy`).
#[cfg(feature = "policy")]
pub trait Policy: Sized + 'static {
    /// Called once per instance, before the first evaluation: parse the config here.
    fn new() -> Result<Self, String>;
    /// The constraints for this snapshot.
    fn evaluate(&mut self, snapshot: SiteSnapshot) -> Result<Constraints, String>;
}

/// Registers the type implementing [`Meter`] as this component's meter.
#[cfg(feature = "meter")]
#[macro_export]
macro_rules! register_meter {
    ($meter:ty) => {
        #[allow(dead_code)] // only exported on wasm32
        struct __LoadstarMeterExport;

        ::std::thread_local! {
            static __LOADSTAR_METER: ::std::cell::RefCell<::std::option::Option<$meter>> =
                const { ::std::cell::RefCell::new(::std::option::Option::None) };
        }

        impl $crate::bindings::Guest for __LoadstarMeterExport {
            fn read() -> ::std::result::Result<$crate::Reading, ::std::string::String> {
                __LOADSTAR_METER.with(|slot| {
                    let mut slot = slot.borrow_mut();
                    if slot.is_none() {
                        *slot = ::std::option::Option::Some(<$meter as $crate::Meter>::new()?);
                    }
                    match slot.as_mut() {
                        ::std::option::Option::Some(meter) => $crate::Meter::read(meter),
                        ::std::option::Option::None => {
                            ::std::result::Result::Err("meter not initialised".into())
                        }
                    }
                })
            }
        }

        // Only on wasm32: natively the export names (`read`...) would shadow libc's, and the
        // plugin's own unit tests run natively.
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            // Natively nothing else names the plugin type; this keeps it "used".
            let _ = <$meter as $crate::Meter>::new;
        };
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_meter!(__LoadstarMeterExport with_types_in $crate::bindings);
    };
}

/// Registers the type implementing [`Policy`] as this component's policy.
#[cfg(feature = "policy")]
#[macro_export]
macro_rules! register_policy {
    ($policy:ty) => {
        #[allow(dead_code)] // only exported on wasm32
        struct __LoadstarPolicyExport;

        ::std::thread_local! {
            static __LOADSTAR_POLICY: ::std::cell::RefCell<::std::option::Option<$policy>> =
                const { ::std::cell::RefCell::new(::std::option::Option::None) };
        }

        impl $crate::bindings::Guest for __LoadstarPolicyExport {
            fn evaluate(
                snapshot: $crate::SiteSnapshot,
            ) -> ::std::result::Result<$crate::Constraints, ::std::string::String> {
                __LOADSTAR_POLICY.with(|slot| {
                    let mut slot = slot.borrow_mut();
                    if slot.is_none() {
                        *slot = ::std::option::Option::Some(<$policy as $crate::Policy>::new()?);
                    }
                    match slot.as_mut() {
                        ::std::option::Option::Some(policy) => {
                            $crate::Policy::evaluate(policy, snapshot)
                        }
                        ::std::option::Option::None => {
                            ::std::result::Result::Err("policy not initialised".into())
                        }
                    }
                })
            }
        }

        // Only on wasm32: natively the export names (`read`...) would shadow libc's, and the
        // plugin's own unit tests run natively.
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            // Natively nothing else names the plugin type; this keeps it "used".
            let _ = <$policy as $crate::Policy>::new;
        };
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_policy!(__LoadstarPolicyExport with_types_in $crate::bindings);
    };
}
