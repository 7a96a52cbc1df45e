#!/usr/bin/env python3
"""Generate the typed OCPP messages of `loadstar-ocpp` from the official JSON schemas.

What it does
------------
Reads every schema in `core/ocpp/schemas/v16/` (OCPP 1.6J: `<Action>.json` for the request,
`<Action>Response.json` for the response) and `core/ocpp/schemas/v201/` (OCPP 2.0.1:
`<Action>Request.json` / `<Action>Response.json`) and writes `core/ocpp/src/v16.rs` and
`core/ocpp/src/v201.rs`: one serde struct per request and per response, named
`<Action>Request` / `<Action>Response`, an `impl crate::Request` per action, one Rust type per
nested object or enum, and `pub const ACTIONS: &[&str]` listing every action of the version.

Naming rules
------------
* Shared definitions (`"$ref": "#/definitions/XType"`, all of 2.0.1 and the 1.6 security
  extension) are named after the definition minus a trailing `Type`, which is exactly the
  schemas' own `javaType` (`ChargingProfileType` -> `ChargingProfile`, `MeasurandEnumType` ->
  `MeasurandEnum`). A definition that occurs in several files becomes one Rust type; the copies
  must be identical once `description`/`javaType`/`comment` are ignored, otherwise the generator
  stops with an error.
* Inline objects and enums (the 1.6 core schemas) take the name given in `V16_NAMES` (the type
  names of the OCPP 1.6 specification, keyed by (message, JSON path)); anything not in the table
  is named after its property in PascalCase (`chargingSchedulePeriod` -> `ChargingSchedulePeriod`).
  Same name + same shape = one type. Same name + different shape: an automatically derived name
  is disambiguated by prefixing the message name (with a warning on stderr); for a name from the
  table that is an error, except for the enums listed in `ENUM_UNIONS`, which become the union of
  the values (see the generated doc comment of those types).
* Enum variants are the wire string in PascalCase (non-alphanumerics dropped, each part's first
  letter upper-cased: `Energy.Active.Import.Register` -> `EnergyActiveImportRegister`, `L1-N` ->
  `L1N`), with `#[serde(rename)]` whenever the identifier differs from the wire string.
* Fields are snake_case; `#[serde(rename_all = "camelCase")]` plus an explicit rename wherever that
  would not reproduce the wire name (`responderURL`); the keyword `type` becomes `kind`.
* Types: integer -> i32 (i64 for the fields in `I64_FIELDS`), number -> f64, boolean -> bool,
  string -> String, date-time string -> chrono::DateTime<Utc>, untyped / free-form object ->
  serde_json::Value, optional -> Option<T> (skipped when None), array -> Vec<T>. An object that
  allows additional properties (2.0.1 `CustomDataType`) gets a flattened
  `extra: serde_json::Map<String, Value>` so unknown keys survive a round trip.

How to run
----------
From the repository root, by hand (never at build time), after changing the schemas or this file:

    python3 core/ocpp/tools/gen_types.py

Python 3 standard library only. The output is deterministic and is formatted with
`rustfmt --edition 2024`, which must be on the PATH. Commit the regenerated files with the script.
"""

import html
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

CRATE = Path(__file__).resolve().parent.parent
SCHEMAS = CRATE / "schemas"
SRC = CRATE / "src"

# OCPP 1.6 specification type names for inline objects/enums: name -> [(message, JSON path)].
# The message is the Rust struct name of the root; `[]` marks the items of an array.
V16_NAMES = {
    # Objects.
    "ChargingProfile": [
        ("RemoteStartTransactionRequest", "chargingProfile"),
        ("SetChargingProfileRequest", "csChargingProfiles"),
    ],
    "KeyValue": [("GetConfigurationResponse", "configurationKey[]")],
    "AuthorizationData": [("SendLocalListRequest", "localAuthorizationList[]")],
    "MeterValue": [
        ("MeterValuesRequest", "meterValue[]"),
        ("StopTransactionRequest", "transactionData[]"),
    ],
    # Enums.
    "AuthorizationStatus": [
        ("AuthorizeResponse", "idTagInfo.status"),
        ("SendLocalListRequest", "localAuthorizationList[].idTagInfo.status"),
        ("StartTransactionResponse", "idTagInfo.status"),
        ("StopTransactionResponse", "idTagInfo.status"),
    ],
    "AvailabilityStatus": [("ChangeAvailabilityResponse", "status")],
    "AvailabilityType": [("ChangeAvailabilityRequest", "type")],
    "CancelReservationStatus": [("CancelReservationResponse", "status")],
    "ChargePointErrorCode": [("StatusNotificationRequest", "errorCode")],
    "ChargePointStatus": [("StatusNotificationRequest", "status")],
    "ChargingProfileKindType": [
        ("RemoteStartTransactionRequest", "chargingProfile.chargingProfileKind"),
        ("SetChargingProfileRequest", "csChargingProfiles.chargingProfileKind"),
    ],
    "ChargingProfilePurposeType": [
        ("ClearChargingProfileRequest", "chargingProfilePurpose"),
        ("RemoteStartTransactionRequest", "chargingProfile.chargingProfilePurpose"),
        ("SetChargingProfileRequest", "csChargingProfiles.chargingProfilePurpose"),
    ],
    "ChargingProfileStatus": [("SetChargingProfileResponse", "status")],
    "ChargingRateUnitType": [
        ("GetCompositeScheduleRequest", "chargingRateUnit"),
        ("GetCompositeScheduleResponse", "chargingSchedule.chargingRateUnit"),
        ("RemoteStartTransactionRequest", "chargingProfile.chargingSchedule.chargingRateUnit"),
        ("SetChargingProfileRequest", "csChargingProfiles.chargingSchedule.chargingRateUnit"),
    ],
    "ClearCacheStatus": [("ClearCacheResponse", "status")],
    "ClearChargingProfileStatus": [("ClearChargingProfileResponse", "status")],
    "ConfigurationStatus": [("ChangeConfigurationResponse", "status")],
    "DataTransferStatus": [("DataTransferResponse", "status")],
    "DiagnosticsStatus": [("DiagnosticsStatusNotificationRequest", "status")],
    "FirmwareStatus": [("FirmwareStatusNotificationRequest", "status")],
    "GetCompositeScheduleStatus": [("GetCompositeScheduleResponse", "status")],
    "MessageTrigger": [("TriggerMessageRequest", "requestedMessage")],
    "ReadingContext": [
        ("MeterValuesRequest", "meterValue[].sampledValue[].context"),
        ("StopTransactionRequest", "transactionData[].sampledValue[].context"),
    ],
    "RecurrencyKindType": [
        ("RemoteStartTransactionRequest", "chargingProfile.recurrencyKind"),
        ("SetChargingProfileRequest", "csChargingProfiles.recurrencyKind"),
    ],
    "RegistrationStatus": [("BootNotificationResponse", "status")],
    "RemoteStartStopStatus": [
        ("RemoteStartTransactionResponse", "status"),
        ("RemoteStopTransactionResponse", "status"),
    ],
    "ReservationStatus": [("ReserveNowResponse", "status")],
    "ResetStatus": [("ResetResponse", "status")],
    "ResetType": [("ResetRequest", "type")],
    "TriggerMessageStatus": [("TriggerMessageResponse", "status")],
    "UnitOfMeasure": [
        ("MeterValuesRequest", "meterValue[].sampledValue[].unit"),
        ("StopTransactionRequest", "transactionData[].sampledValue[].unit"),
    ],
    "UnlockStatus": [("UnlockConnectorResponse", "status")],
    "UpdateStatus": [("SendLocalListResponse", "status")],
    "ValueFormat": [
        ("MeterValuesRequest", "meterValue[].sampledValue[].format"),
        ("StopTransactionRequest", "transactionData[].sampledValue[].format"),
    ],
}

# Enums (by final name) whose copies may differ in their value lists; they become the union.
# UnitOfMeasure: the official StopTransaction.json lacks "Hertz", which MeterValues.json has;
# one type keeps MeterValue/SampledValue shared by MeterValues and StopTransaction.
ENUM_UNIONS = {"v16": {"UnitOfMeasure"}, "v201": set()}

# Integer fields that get i64 instead of i32: (message, JSON path). Wh energy registers can pass
# 2^31 Wh on a busy DC charger, and a failed StopTransaction parse would lose the transaction.
I64_FIELDS = {
    "v16": {("StartTransactionRequest", "meterStart"), ("StopTransactionRequest", "meterStop")},
    "v201": set(),
}

VERSIONS = {
    "v16": {
        "title": "OCPP 1.6J",
        "enum_version": "V16",
        "names": V16_NAMES,
    },
    "v201": {
        "title": "OCPP 2.0.1",
        "enum_version": "V201",
        "names": {},
    },
}

RUST_KEYWORDS = {
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum",
    "extern", "false", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "match", "mod",
    "move", "mut", "pub", "ref", "return", "self", "Self", "static", "struct", "super", "trait",
    "true", "type", "unsafe", "use", "where", "while", "abstract", "become", "box", "do",
    "final", "macro", "override", "priv", "try", "typeof", "unsized", "virtual", "yield",
}
# Names the generated code uses unqualified; a schema type must not shadow them.
RESERVED_TYPE_NAMES = {
    "DateTime", "Utc", "Value", "Map", "Serialize", "Deserialize", "String", "Vec", "Option",
    "Result", "Box", "Request", "OcppVersion", "Self",
}

ANNOTATION_KEYS = {"description", "javaType", "comment"}


class GenError(Exception):
    pass


def warn(msg):
    print(f"gen_types.py: warning: {msg}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Names


def pascal(name):
    return name[:1].upper() + name[1:]


def variant_ident(wire):
    parts = [p for p in re.split(r"[^A-Za-z0-9]+", wire) if p]
    ident = "".join(p[:1].upper() + p[1:] for p in parts)
    if not ident or not ident[0].isalpha():
        raise GenError(f"cannot make an enum variant out of {wire!r}")
    return ident


def snake(name):
    # "SoC" (state of charge) is one word: fullSoC -> full_soc, not full_so_c.
    s = name.replace("SoC", "Soc")
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", s)
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s)
    return s.lower()


def serde_camel(snake_name):
    """What `#[serde(rename_all = "camelCase")]` makes of a snake_case field name."""
    out, upper = [], False
    for ch in snake_name:
        if ch == "_":
            upper = True
        elif upper:
            out.append(ch.upper())
            upper = False
        else:
            out.append(ch)
    return "".join(out)


def field_ident(json_name):
    ident = snake(json_name)
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", ident):
        raise GenError(f"cannot make a field name out of {json_name!r}")
    if ident == "type":
        return "kind"
    if ident in RUST_KEYWORDS:
        return ident + "_"
    return ident


def strip_type_suffix(def_name):
    return def_name[: -len("Type")] if def_name.endswith("Type") and def_name != "Type" else def_name


# ---------------------------------------------------------------------------------------------
# Doc comments


def doc_paragraphs(description):
    """Turns a schema description into rustdoc-safe paragraphs (one per source line)."""
    if not description:
        return []
    text = html.unescape(description).replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.strip() for line in text.split("\n")]
    # 2.0.1 descriptions start with the data-dictionary name and a `urn:` line; drop both.
    urn = [i for i, line in enumerate(lines[:3]) if line.startswith("urn:")]
    if urn:
        lines = lines[urn[-1] + 1:]
    out = []
    for line in lines:
        if not line:
            continue
        # AsciiDoc cross references: <<anchor,Text>> -> Text, <<anchor>> -> anchor.
        line = re.sub(r"<<[^,<>]*,\s*([^<>]*?)\s*>>", r"\1", line)
        line = re.sub(r"<<\s*([^<>]*?)\s*>>", r"\1", line)
        line = line.replace("\\", "\\\\")
        for ch in "[]<>":
            line = line.replace(ch, "\\" + ch)
        if line.count("`") % 2:
            line = line.replace("`", "\\`")
        line = re.sub(r"\s+", " ", line)
        if line[0] in "#=+|":
            line = "\\" + line
        out.append(line)
    return out


DOC_WIDTH = 100
# A continuation line starting like this could open a new Markdown block (list, heading, quote,
# thematic break, fence, table) instead of continuing the paragraph.
BLOCK_START = re.compile(r"([-*+>#=|`~]|\d+[.)])(\s|$)")


def wrap_paragraph(para, prefix):
    """Wraps one Markdown paragraph; leaves it on one line if wrapping could change its meaning."""
    if re.match(r"\d+[.)] ", para):
        return [para]
    hanging = "  " if re.match(r"[-*+] ", para) else ""
    lines = textwrap.wrap(
        para,
        width=max(DOC_WIDTH - len(prefix), 40),
        subsequent_indent=hanging,
        break_long_words=False,
        break_on_hyphens=False,
    )
    if any(BLOCK_START.match(line.strip()) for line in lines[1:]):
        return [para]
    return lines


def render_doc(paragraphs, indent="", marker="///"):
    prefix = f"{indent}{marker} "
    lines = []
    for i, para in enumerate(paragraphs):
        if i:
            lines.append(f"{indent}{marker}")
        lines.extend(prefix + line for line in wrap_paragraph(para, prefix))
    return lines


# ---------------------------------------------------------------------------------------------
# Model


class Field:
    def __init__(self, json_name, ty, required, doc):
        self.json_name = json_name
        self.ident = field_ident(json_name)
        self.ty = ty
        self.required = required
        self.doc = doc


class Struct:
    def __init__(self, name, fields, extra, doc, fixed, shape):
        self.name = name
        self.fields = fields
        self.extra = extra
        self.doc = doc
        self.fixed = fixed
        self.shape = shape
        self.origins = []
        self.uses = []  # (message, path) where a definition is referenced
        self.root = False


class Enum:
    def __init__(self, name, values, doc, fixed, shape):
        self.name = name
        self.values = list(values)
        self.doc = doc
        self.fixed = fixed
        self.shape = shape
        self.origins = []
        self.origin_values = []  # (origin, values) for union enums
        self.uses = []  # (message, path) where a definition is referenced
        self.root = False


def type_key(ty):
    if ty[0] == "ref":
        return ("ref", id(ty[1]))
    if ty[0] == "vec":
        return ("vec", type_key(ty[1]))
    return ty


class Ctx:
    def __init__(self, version, file_name, message, definitions):
        self.version = version
        self.file_name = file_name
        self.message = message
        self.definitions = definitions


class Generator:
    def __init__(self, version):
        self.version = version
        self.conf = VERSIONS[version]
        self.by_name = {}  # name -> [Struct | Enum]
        self.defs = {}  # definition name -> (normalized schema, first file, slot)
        self.override_of = {}
        for name, places in self.conf["names"].items():
            for place in places:
                if place in self.override_of:
                    raise GenError(f"{version}: {place} appears twice in the name table")
                self.override_of[place] = name
        self.used_overrides = set()
        self.used_i64 = set()
        self.actions = []
        self.roots = []

    # -- schema loading ------------------------------------------------------------------------

    def load(self):
        directory = SCHEMAS / self.version
        files = sorted(p for p in directory.iterdir() if p.suffix == ".json")
        if not files:
            raise GenError(f"no schemas in {directory}")
        requests, responses = {}, {}
        for path in files:
            stem = path.stem
            if stem.endswith("Response"):
                responses[stem[: -len("Response")]] = path
            elif self.version == "v16":
                requests[stem] = path
            elif stem.endswith("Request"):
                requests[stem[: -len("Request")]] = path
            else:
                raise GenError(f"{path.name}: neither a request nor a response schema")
        if set(requests) != set(responses):
            raise GenError(
                f"{self.version}: unpaired schemas: {sorted(set(requests) ^ set(responses))}"
            )
        self.actions = sorted(requests)
        for action in self.actions:
            for suffix, path in (("Request", requests[action]), ("Response", responses[action])):
                schema = read_schema(path)
                name = action + suffix
                ctx = Ctx(self.version, path.name, name, schema.get("definitions", {}))
                root = self.object_type(schema, ctx, "", root_name=name)
                root.root = (action, suffix)
                self.roots.append(root)

        unused = set(self.override_of) - self.used_overrides
        if unused:
            raise GenError(f"{self.version}: unused name-table entries {sorted(unused)}")
        unused = I64_FIELDS[self.version] - self.used_i64
        if unused:
            raise GenError(f"{self.version}: unused I64_FIELDS entries {sorted(unused)}")
        self.resolve_names()

    # -- conversion ----------------------------------------------------------------------------

    def convert(self, schema, ctx, path, prop):
        if not isinstance(schema, dict):
            raise GenError(f"{ctx.file_name}: {path}: schema is not an object")
        if "$ref" in schema:
            return ("ref", self.definition(schema["$ref"], ctx, path))
        if "enum" in schema:
            return ("ref", self.inline_enum(schema, ctx, path, prop))
        ty = schema.get("type")
        if ty is None:
            return ("prim", "Value")
        if ty == "array":
            items = schema.get("items")
            if not isinstance(items, dict):
                raise GenError(f"{ctx.file_name}: {path}: only single-schema `items` supported")
            return ("vec", self.convert(items, ctx, path + "[]", prop))
        if ty == "object":
            if not schema.get("properties") and schema.get("additionalProperties") is not False:
                return ("prim", "Value")
            return ("ref", self.object_type(schema, ctx, path, prop=prop))
        if ty == "string":
            return ("prim", "DateTime" if schema.get("format") == "date-time" else "String")
        if ty == "integer":
            key = (ctx.message, path)
            if key in I64_FIELDS[self.version]:
                self.used_i64.add(key)
                return ("prim", "i64")
            return ("prim", "i32")
        if ty == "number":
            return ("prim", "f64")
        if ty == "boolean":
            return ("prim", "bool")
        raise GenError(f"{ctx.file_name}: {path}: unsupported type {ty!r}")

    def definition(self, ref, ctx, use_path):
        match = re.fullmatch(r"#/definitions/([A-Za-z0-9_]+)", ref)
        if not match:
            raise GenError(f"{ctx.file_name}: unsupported $ref {ref!r}")
        def_name = match.group(1)
        if def_name not in ctx.definitions:
            raise GenError(f"{ctx.file_name}: $ref to missing definition {def_name}")
        schema = ctx.definitions[def_name]
        normalized = json.dumps(strip_annotations(schema), sort_keys=True)
        if def_name in self.defs:
            known, first_file, slot = self.defs[def_name]
            if known != normalized:
                raise GenError(
                    f"{self.version}: definition {def_name} differs between {first_file} and "
                    f"{ctx.file_name} (ignoring {sorted(ANNOTATION_KEYS)}); refusing to merge"
                )
            if slot is None:
                raise GenError(f"{self.version}: recursive definition {def_name}")
            slot.origins.append((ctx.message, "#" + def_name))
            slot.uses.append((ctx.message, use_path))
            return slot
        self.defs[def_name] = (normalized, ctx.file_name, None)
        name = strip_type_suffix(def_name)
        path = "#" + def_name
        doc = doc_paragraphs(schema.get("description"))
        if "enum" in schema:
            slot = self.make_enum(schema, ctx, path, name, True, doc)
        elif schema.get("type") == "object":
            slot = self.object_type(schema, ctx, path, fixed_name=name, doc=doc)
        else:
            raise GenError(f"{ctx.file_name}: definition {def_name} is neither object nor enum")
        self.defs[def_name] = (normalized, ctx.file_name, slot)
        slot.uses.append((ctx.message, use_path))
        return slot

    def type_name(self, ctx, path, prop):
        """Name for an inline object/enum: the name table, else the property in PascalCase."""
        key = (ctx.message, path)
        if key in self.override_of:
            self.used_overrides.add(key)
            return self.override_of[key], True
        return pascal(prop), False

    def inline_enum(self, schema, ctx, path, prop):
        name, fixed = self.type_name(ctx, path, prop)
        return self.make_enum(schema, ctx, path, name, fixed, doc_paragraphs(schema.get("description")))

    def make_enum(self, schema, ctx, path, name, fixed, doc):
        values = schema["enum"]
        if schema.get("type") not in (None, "string") or not all(isinstance(v, str) for v in values):
            raise GenError(f"{ctx.file_name}: {path}: only string enums are supported")
        if len(set(values)) != len(values):
            raise GenError(f"{ctx.file_name}: {path}: duplicate enum values")
        idents = [variant_ident(v) for v in values]
        if len(set(idents)) != len(idents):
            raise GenError(f"{ctx.file_name}: {path}: enum values collide as identifiers")
        origin = (ctx.message, path)
        shape = ("enum", tuple(values))
        slot = self.intern(name, shape, lambda: Enum(name, values, doc, fixed, shape), fixed, origin)
        if isinstance(slot, Enum) and slot.shape != shape:
            # Union merge (ENUM_UNIONS): add the values this copy has and the slot lacks.
            for v in values:
                if v not in slot.values:
                    slot.values.append(v)
        slot.origin_values.append((origin, tuple(values)))
        return slot

    def object_type(self, schema, ctx, path, prop=None, root_name=None, fixed_name=None, doc=None):
        if schema.get("type") != "object":
            raise GenError(f"{ctx.file_name}: {path or 'root'}: expected an object")
        required = schema.get("required", [])
        props = schema.get("properties", {})
        missing = [r for r in required if r not in props]
        if missing:
            raise GenError(f"{ctx.file_name}: {path or 'root'}: required but undefined: {missing}")
        fields = []
        for json_name, sub in props.items():
            sub_path = f"{path}.{json_name}" if path else json_name
            ty = self.convert(sub, ctx, sub_path, json_name)
            fdoc = doc_paragraphs(sub.get("description")) if isinstance(sub, dict) else []
            fields.append(Field(json_name, ty, json_name in required, fdoc))
        idents = [f.ident for f in fields]
        extra = schema.get("additionalProperties") is not False
        if extra:
            idents.append("extra")
        if len(set(idents)) != len(idents):
            raise GenError(f"{ctx.file_name}: {path or 'root'}: field names collide: {idents}")
        shape = (
            "struct",
            tuple((f.json_name, type_key(f.ty), f.required) for f in fields),
            extra,
        )
        origin = (ctx.message, path)
        if root_name is not None:
            slot = Struct(root_name, fields, extra, doc or [], True, shape)
            self.by_name.setdefault(root_name, []).append(slot)
            slot.origins.append(origin)
            return slot
        if fixed_name is not None:
            name, fixed = fixed_name, True
        else:
            name, fixed = self.type_name(ctx, path, prop)
            doc = doc_paragraphs(schema.get("description"))
        return self.intern(
            name, shape, lambda: Struct(name, fields, extra, doc or [], fixed, shape), fixed, origin
        )

    def intern(self, name, shape, make, fixed, origin):
        slots = self.by_name.setdefault(name, [])
        for slot in slots:
            if slot.shape == shape:
                slot.origins.append(origin)
                return slot
        if shape[0] == "enum" and name in ENUM_UNIONS[self.version]:
            for slot in slots:
                if isinstance(slot, Enum):
                    warn(
                        f"{self.version}: enum {name} at {fmt_origin(origin)} has values "
                        f"{list(shape[1])}, other copies differ; generating the union"
                    )
                    slot.origins.append(origin)
                    return slot
        slot = make()
        slot.origins.append(origin)
        slots.append(slot)
        return slot

    def resolve_names(self):
        """Disambiguates names shared by different shapes; fails if that is not allowed."""
        conflicts = []
        for name in sorted(self.by_name):
            slots = self.by_name[name]
            if len(slots) < 2:
                continue
            fixed = [s for s in slots if s.fixed]
            if len(fixed) > 1:
                where = " vs ".join(", ".join(fmt_origin(o) for o in s.origins) for s in fixed)
                conflicts.append(f"{name} names {len(fixed)} different shapes: {where}")
                continue
            for slot in slots:
                if slot.fixed:
                    continue
                message = slot.origins[0][0]
                prefix = message[: -len("Request")] if message.endswith("Request") else message
                new_name = prefix + name
                warn(
                    f"{self.version}: {name} has differing shapes; "
                    f"{fmt_origin(slot.origins[0])} becomes {new_name}"
                )
                slot.name = new_name
        if conflicts:
            raise GenError(f"{self.version}: " + "\n  ".join(["conflicting types:"] + conflicts))
        seen = {}
        for slot in self.all_types():
            if slot.name in RESERVED_TYPE_NAMES:
                raise GenError(f"{self.version}: type name {slot.name} would shadow a used name")
            if slot.name in seen:
                raise GenError(f"{self.version}: type name {slot.name} is still ambiguous")
            seen[slot.name] = slot

    def all_types(self):
        out = []
        for slots in self.by_name.values():
            out.extend(slots)
        return out

    # -- emission ------------------------------------------------------------------------------

    def render(self):
        conf = self.conf
        used = set()
        for slot in self.all_types():
            if isinstance(slot, Struct):
                for f in slot.fields:
                    collect_prims(f.ty, used)
                if slot.extra:
                    used.add("Value")
        # The first line is kept whole so that "do not edit by hand" can be grepped for.
        out = [
            f"//! {conf['title']} messages, generated by tools/gen_types.py from the official "
            "schemas; do not edit by hand.",
            "//!",
        ]
        out += render_doc(
            [
                f"Source: `schemas/{self.version}/`. One struct per CALL payload "
                "(`<Action>Request`, implementing [`crate::Request`]) and per CALLRESULT payload "
                "(`<Action>Response`), plus one type per nested object or enum. Optional "
                "properties are `Option`s that are left out when `None`; enums serialize to the "
                "exact wire strings (`as_str` gives them too).",
                "Every type implements `Default` so that messages can be built with struct-update "
                "syntax. The defaults of required fields (the first enum value, 0, an empty "
                "string, the Unix epoch) are placeholders: set required fields explicitly.",
                "Regenerate with `python3 core/ocpp/tools/gen_types.py` from the repository root.",
            ],
            marker="//!",
        )
        out.append("")
        if "DateTime" in used:
            out.append("use chrono::{DateTime, Utc};")
        out.append("use serde::{Deserialize, Serialize};")
        if "Value" in used:
            out.append("use serde_json::Value;")
        out.append("")
        out.append(
            f"/// Every action of {conf['title']}, sorted; each has a request and a response type."
        )
        out.append("pub const ACTIONS: &[&str] = &[")
        for action in self.actions:
            out.append(f'    "{action}",')
        out.append("];")

        roots = {(r.root[0], r.root[1]): r for r in self.roots}
        for action in self.actions:
            out.append("")
            out.extend(self.render_struct(roots[(action, "Request")]))
            out.append("")
            out.extend(self.render_struct(roots[(action, "Response")]))
            out.append("")
            out.append(f"impl crate::Request for {action}Request {{")
            out.append(f'    const ACTION: &\'static str = "{action}";')
            out.append(
                f"    const VERSION: crate::OcppVersion = crate::OcppVersion::{conf['enum_version']};"
            )
            out.append(f"    type Response = {action}Response;")
            out.append("}")

        others = sorted(
            (s for s in self.all_types() if not s.root), key=lambda s: (s.name.lower(), s.name)
        )
        for slot in others:
            out.append("")
            if isinstance(slot, Struct):
                out.extend(self.render_struct(slot))
            else:
                out.extend(self.render_enum(slot))
        return "\n".join(out) + "\n"

    def type_docs(self, slot):
        doc = list(slot.doc)
        if slot.root:
            action, suffix = slot.root
            what = "CALL" if suffix == "Request" else "CALLRESULT"
            doc.insert(0, f"`{action}` {suffix.lower()}: the payload of its {what}.")
            return doc
        if self.version == "v16":
            places = []
            for message, path in slot.uses or slot.origins:
                places.append(f"`{message}` at `{path}`")
            places = list(dict.fromkeys(places))
            if places:
                doc.append("Appears in " + ", ".join(places) + ".")
        if isinstance(slot, Enum) and len({v for _, v in slot.origin_values}) > 1:
            for value in slot.values:
                lacking = [
                    f"`{o[0]}` at `{o[1]}`" for o, vals in slot.origin_values if value not in vals
                ]
                lacking = list(dict.fromkeys(lacking))
                if lacking:
                    doc.append(
                        f"Union of differing schema copies: `{value}` is not allowed in "
                        + ", ".join(lacking)
                        + "."
                    )
        return doc

    def render_struct(self, s):
        out = render_doc(self.type_docs(s))
        # Every type has a Default so messages can be built with struct-update syntax
        # (`..Default::default()` for the many optional fields). Defaults of required fields
        # are placeholders: callers set those explicitly.
        derives = ["Debug", "Clone", "PartialEq", "Default", "Serialize", "Deserialize"]
        out.append(f"#[derive({', '.join(derives)})]")
        if s.fields:
            out.append('#[serde(rename_all = "camelCase")]')
        if not s.fields and not s.extra:
            out.append(f"pub struct {s.name} {{}}")
            return out
        out.append(f"pub struct {s.name} {{")
        for f in s.fields:
            out.extend(render_doc(f.doc, "    "))
            attrs = []
            if serde_camel(f.ident) != f.json_name:
                attrs.append(f'rename = "{f.json_name}"')
            ty = rust_type(f.ty)
            if not f.required:
                attrs.append('default, skip_serializing_if = "Option::is_none"')
                ty = f"Option<{ty}>"
            if attrs:
                out.append(f"    #[serde({', '.join(attrs)})]")
            out.append(f"    pub {f.ident}: {ty},")
        if s.extra:
            out.append("    /// Properties not defined by the schema (it allows any).")
            out.append("    #[serde(flatten)]")
            out.append("    pub extra: serde_json::Map<String, Value>,")
        out.append("}")
        return out

    def render_enum(self, e):
        out = render_doc(self.type_docs(e))
        out.append(
            "#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]"
        )
        out.append(f"pub enum {e.name} {{")
        for i, value in enumerate(e.values):
            ident = variant_ident(value)
            if i == 0:
                # A placeholder for struct-update syntax, not a meaningful default.
                out.append("    #[default]")
            if ident != value:
                out.append(f'    #[serde(rename = "{value}")]')
            out.append(f"    {ident},")
        out.append("}")
        out.append("")
        out.append(f"impl {e.name} {{")
        out.append("    /// The wire string of this value.")
        out.append("    pub const fn as_str(self) -> &'static str {")
        out.append("        match self {")
        for value in e.values:
            out.append(f'            Self::{variant_ident(value)} => "{value}",')
        out.append("        }")
        out.append("    }")
        out.append("}")
        return out


def collect_prims(ty, used):
    if ty[0] == "prim":
        used.add(ty[1])
    elif ty[0] == "vec":
        collect_prims(ty[1], used)


def rust_type(ty):
    if ty[0] == "ref":
        return ty[1].name
    if ty[0] == "vec":
        return f"Vec<{rust_type(ty[1])}>"
    return {"DateTime": "DateTime<Utc>"}.get(ty[1], ty[1])


def fmt_origin(origin):
    message, path = origin
    return f"{message}:{path or '<root>'}"


def strip_annotations(node):
    if isinstance(node, dict):
        return {k: strip_annotations(v) for k, v in node.items() if k not in ANNOTATION_KEYS}
    if isinstance(node, list):
        return [strip_annotations(v) for v in node]
    return node


def read_schema(path):
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GenError(f"{path}: {err}") from err


def main():
    rustfmt = shutil.which("rustfmt")
    if rustfmt is None:
        raise GenError("rustfmt not found on PATH")
    for version in VERSIONS:
        gen = Generator(version)
        gen.load()
        target = SRC / f"{version}.rs"
        target.write_text(gen.render(), encoding="utf-8")
        subprocess.run([rustfmt, "--edition", "2024", str(target)], check=True)
        n_types = len(gen.all_types())
        n_lines = len(target.read_text(encoding="utf-8").splitlines())
        print(
            f"{target.relative_to(CRATE.parent.parent)}: {len(gen.actions)} actions, "
            f"{n_types} types, {n_lines} lines"
        )


if __name__ == "__main__":
    try:
        main()
    except GenError as err:
        print(f"gen_types.py: error: {err}", file=sys.stderr)
        sys.exit(1)
