"""Validate OCSF events against the OCSF schema itself, offline.

Usage: validate.py EVENTS.jsonl

Each line is one OCSF event. Its class (class_uid), the OCSF version it
names (metadata.version) and the profiles it declares (metadata.profiles)
select the schema that the `ocsf-json-schema` package generates from the
OCSF schema export it ships; `jsonschema` validates the event against it
(JSON Schema 2020-12, no unknown attributes). Prints one line per event
and every violation; exits 1 if any event fails or there is none.
"""

import json
import sys

from jsonschema import Draft202012Validator
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

schemas = {}


def validator(version, class_uid, profiles):
    key = (version, class_uid, tuple(profiles))
    if key not in schemas:
        ocsf = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=version))
        name = ocsf.lookup_class_name_from_uid(class_uid)
        schema = ocsf.get_class_schema(class_name=name, profiles=list(profiles))
        schemas[key] = (name, Draft202012Validator(schema))
    return schemas[key]


def main(path):
    failed = 0
    count = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            count += 1
            event = json.loads(line)
            meta = event.get("metadata", {})
            name, v = validator(
                meta.get("version"), event.get("class_uid"), meta.get("profiles", [])
            )
            errors = sorted(v.iter_errors(event), key=lambda e: list(e.absolute_path))
            label = f"{event.get('unmapped', {}).get('kind')} -> {name} {event.get('activity_id')}"
            if errors:
                failed += 1
                print(f"FAIL {label}")
                for e in errors:
                    where = "/".join(str(p) for p in e.absolute_path) or "(event)"
                    print(f"  {where}: {e.message[:300]}")
            else:
                print(f"ok   {label}")
    if count == 0:
        print("no events to validate")
        return 1
    print(f"{count - failed} of {count} events valid")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
