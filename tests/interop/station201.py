"""An OCPP 2.0.1 charging station built on the PyPI `ocpp` package (a client nobody here wrote;
it validates every message against the official schemas). Driven by tests/tests/interop.rs.

Flow: boot, status, authorize, answer the CSMS's set-up (GetVariables, SetVariables), start a
transaction (TransactionEvent), send ISO 15118 charging needs and 3-phase meter values, wait for
a SetChargingProfile from the CSMS (validated by the library), end the transaction, and print a
JSON summary on stdout.
"""
import argparse
import asyncio
import base64
import json
from datetime import datetime, timedelta, timezone

from websockets.asyncio.client import connect

from ocpp.routing import on
from ocpp.v201 import ChargePoint, call, call_result


def now():
    return datetime.now(timezone.utc).isoformat()


class Station(ChargePoint):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.variables = {
            ("SmartChargingCtrlr", "Enabled"): "false",
            ("SmartChargingCtrlr", "RateUnit"): "A,W",
            ("SmartChargingCtrlr", "PeriodsPerSchedule"): "24",
            ("SmartChargingCtrlr", "ProfileStackLevel"): "5",
            ("SmartChargingCtrlr", "Entries"): "16",
            ("SampledDataCtrlr", "TxUpdatedMeasurands"): "Energy.Active.Import.Register",
            ("SampledDataCtrlr", "TxUpdatedInterval"): "0",
            ("AlignedDataCtrlr", "Measurands"): "Energy.Active.Import.Register",
            ("AlignedDataCtrlr", "Interval"): "900",
        }
        self.profiles = []
        self.ops = []
        self.report_sent = False
        self.report_task = None
        self.profile_received = asyncio.Event()
        # The control loop's fallback comes from its failsafe pass (every 2 s), which on a
        # busy machine can come after the test's profile: the flow waits for both.
        self.fallback_received = asyncio.Event()

    @on("GetVariables")
    def on_get_variables(self, get_variable_data, **_):
        results = []
        for d in get_variable_data:
            key = (d["component"]["name"], d["variable"]["name"])
            value = self.variables.get(key)
            r = {"attribute_status": "Accepted" if value is not None else "UnknownVariable", "component": d["component"], "variable": d["variable"]}
            if value is not None:
                r["attribute_value"] = value
            results.append(r)
        return call_result.GetVariables(get_variable_result=results)

    @on("SetVariables")
    def on_set_variables(self, set_variable_data, **_):
        results = []
        for d in set_variable_data:
            key = (d["component"]["name"], d["variable"]["name"])
            if key == ("AlignedDataCtrlr", "Interval"):
                status = "Rejected"
            else:
                self.variables[key] = d["attribute_value"]
                status = "Accepted"
            results.append({"attribute_status": status, "component": d["component"], "variable": d["variable"]})
        return call_result.SetVariables(set_variable_result=results)

    @on("SetChargingProfile")
    def on_set_charging_profile(self, evse_id, charging_profile, **_):
        self.profiles.append({"evse_id": evse_id, "profile": charging_profile})
        # The test's own profile (id 11) and the control loop's fallback end the flow; its
        # dynamic profiles arrive too, and the library validates them all.
        if charging_profile.get("id") == 11:
            self.profile_received.set()
        if charging_profile.get("charging_profile_purpose") == "TxDefaultProfile":
            self.fallback_received.set()
        return call_result.SetChargingProfile(status="Accepted")


    # Operations the CSMS's typed API sends; the library validates each request on arrival.
    @on("RequestStartTransaction")
    def on_request_start(self, id_token, remote_start_id, **_):
        self.ops.append("RequestStartTransaction")
        return call_result.RequestStartTransaction(status="Accepted")

    @on("RequestStopTransaction")
    def on_request_stop(self, transaction_id, **_):
        self.ops.append("RequestStopTransaction")
        return call_result.RequestStopTransaction(status="Accepted")

    @on("Reset")
    def on_reset(self, type, **_):
        self.ops.append("Reset")
        return call_result.Reset(status="Scheduled")

    @on("TriggerMessage")
    def on_trigger(self, requested_message, **_):
        self.ops.append("TriggerMessage")
        return call_result.TriggerMessage(status="Accepted")

    @on("ChangeAvailability")
    def on_change_availability(self, operational_status, **_):
        self.ops.append("ChangeAvailability")
        return call_result.ChangeAvailability(status="Accepted")

    @on("UnlockConnector")
    def on_unlock(self, evse_id, connector_id, **_):
        self.ops.append("UnlockConnector")
        return call_result.UnlockConnector(status="Unlocked")

    @on("ClearChargingProfile")
    def on_clear_profile(self, **_):
        self.ops.append("ClearChargingProfile")
        return call_result.ClearChargingProfile(status="Accepted")

    @on("GetCompositeSchedule")
    def on_composite(self, duration, evse_id, **_):
        self.ops.append("GetCompositeSchedule")
        return call_result.GetCompositeSchedule(status="Accepted", schedule={
            "evse_id": evse_id, "duration": duration, "schedule_start": now(), "charging_rate_unit": "A",
            "charging_schedule_period": [{"start_period": 0, "limit": 12.0}]})

    @on("GetBaseReport")
    def on_base_report(self, request_id, report_base, **_):
        self.ops.append("GetBaseReport")
        self.report_task = asyncio.get_running_loop().create_task(self.send_report(request_id))
        return call_result.GetBaseReport(status="Accepted")

    async def send_report(self, request_id):
        await asyncio.sleep(0.05)
        data = [{"component": {"name": "SmartChargingCtrlr"}, "variable": {"name": "PeriodsPerSchedule"},
                 "variable_attribute": [{"type": "Actual", "value": "48"}]},
                {"component": {"name": "SmartChargingCtrlr"}, "variable": {"name": "Phases3to1"},
                 "variable_attribute": [{"type": "Actual", "value": "true"}]}]
        await self.call(call.NotifyReport(request_id=request_id, generated_at=now(), seq_no=0, report_data=data))
        self.report_sent = True


def meter_value(energy_wh, amps):
    sampled = [{"value": energy_wh, "measurand": "Energy.Active.Import.Register", "unit_of_measure": {"unit": "Wh"}}]
    for phase, a in zip(("L1", "L2", "L3"), amps):
        sampled.append({"value": a, "measurand": "Current.Import", "phase": phase, "unit_of_measure": {"unit": "A"}})
    sampled.append({"value": sum(amps) * 0.23, "measurand": "Power.Active.Import", "unit_of_measure": {"unit": "W", "multiplier": 3}})
    return {"timestamp": now(), "sampled_value": sampled}


async def flow(cp, summary):
    boot = await cp.call(call.BootNotification(charging_station={"model": "PyModel201", "vendor_name": "PyVendor", "firmware_version": "2.0.0"}, reason="PowerUp"))
    summary["boot_status"] = boot.status
    summary["heartbeat_interval"] = boot.interval
    await cp.call(call.Heartbeat())
    await cp.call(call.StatusNotification(timestamp=now(), connector_status="Occupied", evse_id=1, connector_id=1))
    auth = await cp.call(call.Authorize(id_token={"id_token": "TAG-OK", "type": "ISO14443"}))
    summary["authorize_ok"] = auth.id_token_info["status"]
    tx = "py-tx-0001"
    token = {"id_token": "TAG-OK", "type": "ISO14443"}
    await cp.call(call.TransactionEvent(event_type="Started", timestamp=now(), trigger_reason="Authorized", seq_no=0,
                                        transaction_info={"transaction_id": tx, "charging_state": "EVConnected"},
                                        evse={"id": 1, "connector_id": 1}, id_token=token,
                                        meter_value=[meter_value(2000.0, (0.0, 0.0, 0.0))]))
    departure = (datetime.now(timezone.utc) + timedelta(hours=4)).isoformat()
    needs = await cp.call(call.NotifyEVChargingNeeds(evse_id=1, charging_needs={
        "requested_energy_transfer": "AC_three_phase", "departure_time": departure,
        "ac_charging_parameters": {"energy_amount": 20000, "ev_min_current": 6, "ev_max_current": 16, "ev_max_voltage": 400}}))
    summary["needs_status"] = needs.status
    for i in range(3):
        await cp.call(call.TransactionEvent(event_type="Updated", timestamp=now(), trigger_reason="MeterValuePeriodic", seq_no=1 + i,
                                            transaction_info={"transaction_id": tx, "charging_state": "Charging"},
                                            meter_value=[meter_value(2000.0 + 400 * (i + 1), (16.0, 16.0, 15.9))]))
    # A retried event (same seqNo) must be acknowledged and not applied twice.
    await cp.call(call.TransactionEvent(event_type="Updated", timestamp=now(), trigger_reason="MeterValuePeriodic", seq_no=3,
                                        transaction_info={"transaction_id": tx, "charging_state": "Charging"},
                                        meter_value=[meter_value(9999.0, (16.0, 16.0, 15.9))]))
    await cp.call(call.MeterValues(evse_id=1, meter_value=[meter_value(3300.0, (15.0, 15.0, 15.0))]))
    print(json.dumps({"event": "charging", "transaction_id": tx}), flush=True)
    try:
        await asyncio.wait_for(
            asyncio.gather(cp.profile_received.wait(), cp.fallback_received.wait()), timeout=30
        )
    except asyncio.TimeoutError:
        summary["profile_timeout"] = True
    if cp.report_task is not None:
        await cp.report_task
    await cp.call(call.TransactionEvent(event_type="Ended", timestamp=now(), trigger_reason="EVDeparted", seq_no=5,
                                        transaction_info={"transaction_id": tx, "charging_state": "Idle", "stopped_reason": "EVDisconnected"},
                                        meter_value=[meter_value(3500.0, (0.0, 0.0, 0.0))]))
    summary["profiles"] = cp.profiles
    summary["ops"] = cp.ops
    summary["report_sent"] = cp.report_sent
    summary["variables"] = {f"{c}.{v}": val for (c, v), val in cp.variables.items()}


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--id", required=True)
    p.add_argument("--password", required=True)
    args = p.parse_args()
    token = base64.b64encode(f"{args.id}:{args.password}".encode()).decode()
    async with connect(f"{args.url}/{args.id}", subprotocols=["ocpp2.0.1"], additional_headers={"Authorization": f"Basic {token}"}) as ws:
        if ws.subprotocol != "ocpp2.0.1":
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
