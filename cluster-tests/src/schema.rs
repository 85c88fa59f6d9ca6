//! A JSON Schema checker for the subset an OpenAPI 3.1 description generated from Rust
//! types uses: `$ref` into `#/components/schemas`, `type` (one or a list, `null`
//! included), `properties`/`required`, `additionalProperties`, `items`, `enum`,
//! `oneOf`/`anyOf`/`allOf`, integer minimums. Stricter than JSON Schema in one way: an
//! object whose schema lists its `properties` (and says nothing of
//! `additionalProperties`) may not carry others — a field a handler emits must be in
//! the description.

use serde_json::Value;

/// Checks `v` against `schema`, resolving references in `doc` (the whole
/// description). The error names the JSON path that does not match, and why.
pub fn check(v: &Value, schema: &Value, doc: &Value) -> Result<(), String> {
    at(v, schema, doc, "$")
}

fn resolve<'a>(schema: &'a Value, doc: &'a Value) -> Result<&'a Value, String> {
    let Some(r) = schema.get("$ref").and_then(Value::as_str) else {
        return Ok(schema);
    };
    let name = r
        .strip_prefix("#/components/schemas/")
        .ok_or_else(|| format!("unsupported reference {r}"))?;
    doc["components"]["schemas"]
        .get(name)
        .ok_or_else(|| format!("reference to a missing schema {name}"))
}

fn type_matches(v: &Value, t: &str) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        _ => false,
    }
}

fn at(v: &Value, schema: &Value, doc: &Value, path: &str) -> Result<(), String> {
    let s = resolve(schema, doc)?;
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        for sub in all {
            at(v, sub, doc, path)?;
        }
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(alts) = s.get(key).and_then(Value::as_array) {
            let fits = alts.iter().filter(|a| at(v, a, doc, path).is_ok()).count();
            let ok = if key == "oneOf" { fits == 1 } else { fits >= 1 };
            if !ok {
                return Err(format!(
                    "{path}: matches {fits} of the {key} alternatives: {v}"
                ));
            }
        }
    }
    match s.get("type") {
        Some(Value::String(t)) if !type_matches(v, t) => {
            return Err(format!("{path}: expected {t}, got {v}"));
        }
        Some(Value::Array(ts))
            if !ts
                .iter()
                .filter_map(Value::as_str)
                .any(|t| type_matches(v, t)) =>
        {
            return Err(format!("{path}: expected one of {ts:?}, got {v}"));
        }
        _ => {}
    }
    if let Some(options) = s.get("enum").and_then(Value::as_array) {
        if !options.contains(v) {
            return Err(format!("{path}: {v} is not one of {options:?}"));
        }
    }
    if let (Some(min), Some(n)) = (s.get("minimum").and_then(Value::as_f64), v.as_f64()) {
        if n < min {
            return Err(format!("{path}: {n} is below the minimum {min}"));
        }
    }
    if let Some(obj) = v.as_object() {
        let props = s.get("properties").and_then(Value::as_object);
        for req in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !obj.contains_key(req) {
                return Err(format!("{path}: the required field {req} is missing"));
            }
        }
        for (k, fv) in obj {
            let sub = props.and_then(|p| p.get(k));
            match (sub, s.get("additionalProperties")) {
                (Some(sub), _) => at(fv, sub, doc, &format!("{path}.{k}"))?,
                (None, Some(Value::Bool(false))) => {
                    return Err(format!("{path}: field {k} is not allowed"))
                }
                (None, Some(extra @ Value::Object(_))) => {
                    at(fv, extra, doc, &format!("{path}.{k}"))?
                }
                (None, _) if props.is_some() => {
                    return Err(format!("{path}: field {k} is not in the description"))
                }
                (None, _) => {}
            }
        }
    }
    if let (Some(items), Some(arr)) = (s.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            at(x, items, doc, &format!("{path}[{i}]"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({"components": {"schemas": {
            "Token": {"type": "object", "required": ["token", "kind"],
                "properties": {
                    "token": {"type": "string"},
                    "kind": {"type": "string", "enum": ["one_time", "card_on_file"]},
                    "used_at": {"type": ["integer", "null"], "minimum": 0},
                    "cvc": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/Cvc"}]},
                }},
            "Cvc": {"type": "string", "enum": ["available", "unavailable"]},
            "Counts": {"type": "object", "additionalProperties": {"type": "integer"}},
        }}})
    }

    #[test]
    fn it_accepts_what_matches_and_names_what_does_not() {
        let d = doc();
        let token = json!({"$ref": "#/components/schemas/Token"});
        let ok = json!({"token": "tok_a", "kind": "one_time", "used_at": null, "cvc": "available"});
        assert_eq!(check(&ok, &token, &d), Ok(()));
        for (bad, why) in [
            (json!({"token": "t"}), "required field kind"),
            (json!({"token": "t", "kind": "both"}), "is not one of"),
            (
                json!({"token": 1, "kind": "one_time"}),
                "$.token: expected string",
            ),
            (
                json!({"token": "t", "kind": "one_time", "used_at": -1}),
                "below the minimum",
            ),
            (
                json!({"token": "t", "kind": "one_time", "cvc": "lost"}),
                "oneOf",
            ),
            (
                json!({"token": "t", "kind": "one_time", "extra": 1}),
                "field extra is not in",
            ),
        ] {
            let e = check(&bad, &token, &d).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let counts = json!({"$ref": "#/components/schemas/Counts"});
        assert!(check(&json!({"a": 1}), &counts, &d).is_ok());
        assert!(check(&json!({"a": "x"}), &counts, &d).is_err());
    }
}
