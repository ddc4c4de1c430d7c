//! Schema checks without a broker: the `dataloom schema check` command.

use super::*;

const TEMP: &str = r#"{"type":"object","properties":{"celsius":{"type":"number"}},"required":["celsius"]}"#;

#[test]
fn cli_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let schema = dir.path().join("temperature.json");
    std::fs::write(&schema, TEMP).expect("write");
    let good = dir.path().join("good.json");
    std::fs::write(&good, r#"{"celsius": 3}"#).expect("write");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"celsius": true}"#).expect("write");
    assert!(check_files(&schema, None).expect("valid").starts_with("ok: schema temperature"));
    assert!(check_files(&schema, Some(&good)).is_ok());
    let e = check_files(&schema, Some(&bad)).expect_err("invalid");
    assert_eq!(e, "schema temperature v1: /celsius: true is not of type \"number\"");
}
