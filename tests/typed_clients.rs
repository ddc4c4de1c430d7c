//! Typed clients from schemas (issue 16, part 4): the README's three commands, for real. The
//! broker registers the repository's `schemas/`, `dataloom schema export` writes them out,
//! json-schema-to-typescript makes TypeScript types, `tsc --strict` accepts a client that uses
//! them (and refuses one that breaks them), and the compiled client publishes and reads a typed
//! value with MQTT.js. A running broker exports the same through `--url`. Needs `tests/typed/node_modules` (`make test-deps` runs `npm ci` there).
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::binary::Site;

fn typed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/typed")
}

/// Runs `program args` in `dir`; returns (success, stdout + stderr).
fn run(dir: &Path, program: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_schemas_give_a_typed_mqtt_client() {
    let modules = typed_dir().join("node_modules");
    assert!(modules.join(".bin/tsc").exists(), "tests/typed/node_modules is missing: run `make test-deps`");
    let mut site = Site::new();
    let repo_schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    site.env.push(("DATALOOM_SCHEMAS__DIR".into(), repo_schemas.display().to_string()));
    site.start().await.stop().await;

    // 1. dataloom schema export DIR (the broker is stopped: it reads the data directory).
    let work = site.tmp.path().to_path_buf();
    let data = site.data_dir().display().to_string();
    let (ok, out) = run(
        &work,
        Path::new(env!("CARGO_BIN_EXE_dataloom")),
        &["schema", "export", "export", "--data-dir", &data],
    );
    assert!(ok, "schema export: {out}");
    assert!(out.contains("sensors/+/temperature") && out.contains("SensorsTemperature"), "{out}");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("export/index.json")).expect("index.json"))
            .expect("json");
    assert_eq!(index["meters/+/#"]["file"], "meters/+/%23.json", "{index}");

    // 2. json-schema-to-typescript: one interface per schema, named by its title.
    let ts = work.join("ts");
    std::fs::create_dir_all(&ts).expect("ts dir");
    for f in ["client.ts", "bad.ts", "gen.mjs"] {
        std::fs::copy(typed_dir().join(f), ts.join(f)).expect("copy a TypeScript source");
    }
    std::os::unix::fs::symlink(&modules, ts.join("node_modules")).expect("link node_modules");
    let node = Path::new("node");
    let (ok, out) = run(&ts, node, &["gen.mjs", "../export", "types.ts"]);
    assert!(ok, "json-schema-to-typescript: {out}");
    let types = std::fs::read_to_string(ts.join("types.ts")).expect("types.ts");
    assert!(types.contains("export interface SensorsTemperature"), "{types}");

    // 3. tsc --strict: the client that follows the types compiles, the one that breaks them not.
    let tsc = ts.join("node_modules/.bin/tsc");
    let (ok, out) = run(
        &ts,
        &tsc,
        &[
            "--strict",
            "--esModuleInterop",
            "--skipLibCheck",
            "--module",
            "commonjs",
            "--target",
            "ES2022",
            "--outDir",
            "js",
            "client.ts",
            "types.ts",
        ],
    );
    assert!(ok, "tsc --strict on the typed client: {out}");
    let (ok, out) = run(&ts, &tsc, &["--strict", "--noEmit", "--skipLibCheck", "bad.ts", "types.ts"]);
    assert!(!ok, "tsc accepted a value that breaks the schema's type");
    assert!(out.contains("bad.ts") && out.contains("not assignable to type 'number'"), "{out}");

    // 4. The compiled client publishes a typed value and reads it back through the broker.
    let broker = site.start().await;
    let url = format!("mqtt://{}", broker.addr);
    let (ok, out) = run(&ts, node, &["js/client.js", &url]);
    assert!(ok && out.contains("read celsius=21.5"), "typed client: {out}");

    // 5. While it runs, the data directory is locked: export says so and asks the broker instead.
    let exe = Path::new(env!("CARGO_BIN_EXE_dataloom"));
    let (ok, out) = run(&work, exe, &["schema", "export", "again", "--data-dir", &data]);
    assert!(!ok && out.contains("--url"), "a locked data directory points at --url: {out}");
    let http = format!("http://{}", broker.http_addr().await);
    let (ok, out) = run(&work, exe, &["schema", "export", "again", "--url", &http]);
    assert!(ok, "schema export --url: {out}");
    let again = std::fs::read(work.join("again/index.json")).expect("index.json from --url");
    let again: serde_json::Value = serde_json::from_slice(&again).expect("json");
    assert_eq!(again, index, "the running broker exports the same schemas");
    broker.stop().await;
}
