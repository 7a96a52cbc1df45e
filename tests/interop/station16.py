"""An OCPP 1.6J charge point built on the PyPI `ocpp` package (a client nobody here wrote; it
validates every message against the official schemas). Driven by tests/tests/interop.rs.

Flow: boot, status, authorize, answer the CSMS's set-up (GetConfiguration, ChangeConfiguration),
start a transaction, send 3-phase MeterValues, wait for a SetChargingProfile from the CSMS
(validated by the library), stop the transaction, and print a JSON summary on stdout.
"""
import argparse
import asyncio
import base64
import json
import sys
from datetime import datetime, timezone

from websockets.asyncio.client import connect

from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import (
    Action,
    AuthorizationStatus,
    ChargePointErrorCode,
    ChargePointStatus,
    ChargingProfileStatus,
    ConfigurationStatus,
    RegistrationStatus,
)


def now():
    return datetime.now(timezone.utc).isoformat()


class Station(ChargePoint):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.config = {
            "SupportedFeatureProfiles": "Core,FirmwareManagement,SmartCharging",
            "ChargeProfileMaxStackLevel": "3",
            "ChargingScheduleAllowedChargingRateUnit": "Current",
            "ChargingScheduleMaxPeriods": "10",
            "MaxChargingProfilesInstalled": "5",
            "MeterValueSampleInterval": "900",
            "MeterValuesSampledData": "Energy.Active.Import.Register",
        }
        self.profiles = []
        self.config_reads = []
        self.ops = []
        self.profile_received = asyncio.Event()
        # The control loop's fallback comes from its failsafe pass (every 2 s), which on a
        # busy machine can come after the test's profile: the flow waits for both.
        self.fallback_received = asyncio.Event()

    @on(Action.get_configuration)
    def on_get_configuration(self, key=None, **_):
        self.config_reads.append(key)
        keys = key if key else list(self.config)
        known = [{"key": k, "readonly": False, "value": self.config[k]} for k in keys if k in self.config]
        unknown = [k for k in keys if k not in self.config]
        return call_result.GetConfiguration(configuration_key=known, unknown_key=unknown or None)

    @on(Action.change_configuration)
    def on_change_configuration(self, key, value, **_):
        if key == "ReadOnlyKey":
            return call_result.ChangeConfiguration(status=ConfigurationStatus.rejected)
        self.config[key] = value
        return call_result.ChangeConfiguration(status=ConfigurationStatus.accepted)

    @on(Action.set_charging_profile)
    def on_set_charging_profile(self, connector_id, cs_charging_profiles, **_):
        self.profiles.append({"connector_id": connector_id, "profile": cs_charging_profiles})
        # The test's own profile (id 7) and the control loop's fallback end the flow; its
        # dynamic profiles arrive too, and the library validates them all.
        if cs_charging_profiles.get("charging_profile_id") == 7:
            self.profile_received.set()
        if cs_charging_profiles.get("charging_profile_purpose") == "TxDefaultProfile":
            self.fallback_received.set()
        return call_result.SetChargingProfile(status=ChargingProfileStatus.accepted)


    # Operations the CSMS's typed API sends; the library validates each request on arrival.
    def _op(self, action, kwargs):
        self.ops.append(action)

    @on(Action.remote_start_transaction)
    def on_remote_start(self, id_tag, **kw):
        self._op("RemoteStartTransaction", kw)
        return call_result.RemoteStartTransaction(status="Accepted")

    @on(Action.remote_stop_transaction)
    def on_remote_stop(self, transaction_id, **kw):
        self._op("RemoteStopTransaction", kw)
        return call_result.RemoteStopTransaction(status="Accepted")

    @on(Action.reset)
    def on_reset(self, type, **kw):
        self._op("Reset", kw)
        return call_result.Reset(status="Accepted")

    @on(Action.trigger_message)
    def on_trigger(self, requested_message, **kw):
        self._op("TriggerMessage", kw)
        return call_result.TriggerMessage(status="Accepted")

    @on(Action.change_availability)
    def on_change_availability(self, connector_id, type, **kw):
        self._op("ChangeAvailability", kw)
        return call_result.ChangeAvailability(status="Scheduled")

    @on(Action.unlock_connector)
    def on_unlock(self, connector_id, **kw):
        self._op("UnlockConnector", kw)
        return call_result.UnlockConnector(status="Unlocked")

    @on(Action.clear_charging_profile)
    def on_clear_profile(self, **kw):
        self._op("ClearChargingProfile", kw)
        return call_result.ClearChargingProfile(status="Accepted")

    @on(Action.get_composite_schedule)
    def on_composite(self, connector_id, duration, **kw):
        self._op("GetCompositeSchedule", kw)
        return call_result.GetCompositeSchedule(
            status="Accepted", connector_id=connector_id, schedule_start=now(),
            charging_schedule={"duration": duration, "charging_rate_unit": "A",
                               "charging_schedule_period": [{"start_period": 0, "limit": 16.0}]})


def meter_value(energy_wh, amps):
    sampled = [{"value": str(energy_wh), "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]
    for phase, a in zip(("L1", "L2", "L3"), amps):
        sampled.append({"value": f"{a:.1f}", "measurand": "Current.Import", "phase": phase, "unit": "A"})
    sampled.append({"value": "32", "measurand": "Current.Offered", "unit": "A"})
    sampled.append({"value": f"{sum(amps) * 230:.0f}", "measurand": "Power.Active.Import", "unit": "W"})
    return {"timestamp": now(), "sampled_value": sampled}


async def flow(cp, summary):
    boot = await cp.call(call.BootNotification(charge_point_model="PyModel", charge_point_vendor="PyVendor", firmware_version="1.2.3"))
    summary["boot_status"] = boot.status
    summary["heartbeat_interval"] = boot.interval
    hb = await cp.call(call.Heartbeat())
    summary["heartbeat_time"] = hb.current_time
    await cp.call(call.StatusNotification(connector_id=1, error_code=ChargePointErrorCode.no_error, status=ChargePointStatus.preparing))
    auth = await cp.call(call.Authorize(id_tag="TAG-OK"))
    summary["authorize_ok"] = auth.id_tag_info["status"]
    bad = await cp.call(call.Authorize(id_tag="TAG-BAD"))
    summary["authorize_bad"] = bad.id_tag_info["status"]
    start = await cp.call(call.StartTransaction(connector_id=1, id_tag="TAG-OK", meter_start=1000, timestamp=now()))
    tx = start.transaction_id
    summary["transaction_id"] = tx
    await cp.call(call.StatusNotification(connector_id=1, error_code=ChargePointErrorCode.no_error, status=ChargePointStatus.charging))
    for i in range(3):
        await cp.call(call.MeterValues(connector_id=1, transaction_id=tx, meter_value=[meter_value(1000 + 500 * (i + 1), (16.0, 15.5, 15.8))]))
    summary["ready_for_profile"] = True
    print(json.dumps({"event": "charging", "transaction_id": tx}), flush=True)
    try:
        await asyncio.wait_for(
            asyncio.gather(cp.profile_received.wait(), cp.fallback_received.wait()), timeout=30
        )
    except asyncio.TimeoutError:
        summary["profile_timeout"] = True
    stop = await cp.call(call.StopTransaction(meter_stop=3500, timestamp=now(), transaction_id=tx, reason="EVDisconnected", id_tag="TAG-OK"))
    summary["stop_status"] = (stop.id_tag_info or {}).get("status")
    await cp.call(call.StatusNotification(connector_id=1, error_code=ChargePointErrorCode.no_error, status=ChargePointStatus.available))
    summary["profiles"] = cp.profiles
    summary["config"] = cp.config
    summary["config_reads"] = cp.config_reads
    summary["ops"] = cp.ops


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True, help="ws://host:port/ocpp")
    p.add_argument("--id", required=True)
    p.add_argument("--password", required=True)
    args = p.parse_args()
    token = base64.b64encode(f"{args.id}:{args.password}".encode()).decode()
    async with connect(f"{args.url}/{args.id}", subprotocols=["ocpp1.6"], additional_headers={"Authorization": f"Basic {token}"}) as ws:
        if ws.subprotocol != "ocpp1.6":
            raise SystemExit(f"CSMS chose subprotocol {ws.subprotocol!r}")
        cp = Station(args.id, ws)
        summary = {}
        runner = asyncio.create_task(cp.start())
        try:
            await flow(cp, summary)
        finally:
            runner.cancel()
    print(json.dumps({"event": "done", "summary": summary}, default=str), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
