//! Hand-written JSON Schemas, for the types whose rules utoipa's derive cannot state: the range
//! of array items, a body that is one thing or another, a tensor's shape. Each type that needs
//! one implements `utoipa::PartialSchema` with [`from_json`] beside its definition, so the
//! schema sits next to the code that enforces it. The document must be exactly true: every
//! request it allows is served, every request it forbids is refused with a 4xx, every answer
//! matches it (`cargo xtask ci` checks this with schemathesis).

use serde_json::Value;
use utoipa::openapi::{schema::Schema, RefOr};

/// The schema written as JSON. Panics if utoipa's model would drop or change any of it, which
/// the tests that build the document would show at once.
pub fn from_json(value: Value) -> RefOr<Schema> {
    let schema: RefOr<Schema> = serde_json::from_value(value.clone())
        .unwrap_or_else(|err| panic!("not a schema utoipa can hold ({err}): {value}"));
    let back = serde_json::to_value(&schema).expect("a schema serializes");
    assert_eq!(back, value, "utoipa changed a hand-written schema");
    schema
}

/// A reference to the component schema `name`.
pub fn reference(name: &str) -> Value {
    serde_json::json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// A number in `[-limit, limit]`.
pub fn bounded_number(limit: f64) -> Value {
    serde_json::json!({ "type": "number", "format": "double", "minimum": -limit, "maximum": limit })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn schemas_survive_utoipa_unchanged() {
        let value = json!({
            "oneOf": [
                {"type": "object", "required": ["a"], "properties": {"a": bounded_number(1e300), "b": {"type": "null"}}},
                {"type": "array", "prefixItems": [{"type": "integer", "minimum": 1}], "items": false, "minItems": 1}
            ],
            "description": "either"
        });
        assert_eq!(
            serde_json::to_value(from_json(value.clone())).unwrap(),
            value
        );
    }

    #[test]
    #[should_panic(expected = "utoipa changed")]
    fn a_schema_utoipa_would_change_is_caught() {
        from_json(json!({"type": "number", "minimum": 1.0}));
    }
}
