//! README.md is tested (issue 16): every shell example in it runs here, in document order,
//! against one real broker started as `make run` starts it, and must print what the README
//! says it prints. A changed example that no longer works fails this test.
//!
//! The conventions (also stated in the README's "Examples in this README"):
//! - A ```` ```console ```` block is run: a line starting with `$ ` is a command (a line ending
//!   in `\` continues it), the lines after it are what it prints, stdout and stderr together.
//!   `...` in an expected line stands for any text. One `bash` runs the whole block, so
//!   variables carry from one command to the next, and exported ones to the next block;
//!   blocks share the broker and the directory (a temporary one with a link to `schemas/`).
//! - A ```` ```text broker-log ```` block lists lines the broker must have logged by then.
//! - A block whose info string is `from PATH` (the README's "Clients" snippets) must equal the
//!   lines between PATH's `README: begin` and `README: end` markers: the code tests/clients.rs runs.
//! - Every other shell block (```` ```sh ````, ```` ```bash ````, ```` ```shell ````, or
//!   ```` ```console ```` with it) says `not run: REASON` in its info string, e.g.
//!   ```` ```sh not run: needs TLS certificates (make certs) ````. A shell block that is neither
//!   run nor marked fails the test.
//!
//! "As `make run` starts it": `dataloom serve` with no flags in a directory holding a link to
//! the repository's `schemas/`, so the defaults (`./data`, `./schemas`, every `[schemas]`
//! setting) apply; only the two listeners move to free ports, through
//! `DATALOOM_LISTENERS__TCP__BIND` and `DATALOOM_HTTP__BIND`. The examples keep the default
//! addresses: `mosquitto_pub`/`mosquitto_sub` read `-p PORT` from their options files
//! (`$XDG_CONFIG_HOME/mosquitto_pub`), `curl` maps `127.0.0.1:9883` and `localhost:9883` (a
//! name the Host rule of `/v1` and `/` accepts on any port) with `connect-to` in its
//! `.curlrc` (`CURL_HOME`), and the `dataloom` CLI (first on `PATH`) finds the HTTP listener
//! through `DATALOOM_HTTP__BIND`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::binary::Site;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// How long one console block may run.
const BLOCK: Duration = Duration::from_secs(60);

/// Printed after each command of a block to split the output.
const END: &str = "@@readme-command-end@@";

/// A fenced block of README.md.
#[derive(Debug)]
struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    lang: String,
    /// The info string after the language.
    info: String,
    body: Vec<String>,
}

fn blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (i, l) in markdown.lines().enumerate() {
        match open.take() {
            None => {
                if let Some(rest) = l.strip_prefix("```") {
                    let (lang, info) = rest.split_once(' ').unwrap_or((rest, ""));
                    let (lang, info) = (lang.trim().to_owned(), info.trim().to_owned());
                    open = Some(Block { line: i + 1, lang, info, body: Vec::new() });
                }
            }
            Some(mut b) => {
                if l.trim_end() == "```" {
                    out.push(b);
                } else {
                    b.body.push(l.to_owned());
                    open = Some(b);
                }
            }
        }
    }
    assert!(open.is_none(), "README.md ends inside a fenced block");
    out
}

/// One command of a console block and what it prints.
#[derive(Debug)]
struct Step {
    line: usize,
    command: String,
    expected: Vec<String>,
}

fn steps(b: &Block) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::new();
    let mut continued = false;
    for (i, l) in b.body.iter().enumerate() {
        if continued {
            let s = out.last_mut().expect("a continued command");
            s.command.push('\n');
            s.command.push_str(l);
            continued = l.ends_with('\\');
        } else if let Some(cmd) = l.strip_prefix("$ ") {
            out.push(Step { line: b.line + 1 + i, command: cmd.to_owned(), expected: Vec::new() });
            continued = l.ends_with('\\');
        } else {
            let s = out.last_mut().unwrap_or_else(|| {
                panic!("README.md:{}: console block output before any `$ ` command", b.line + 1 + i)
            });
            s.expected.push(l.to_owned());
        }
    }
    out
}

/// Whether `line` matches `pattern`, where `...` stands for any text.
fn matches(pattern: &str, line: &str) -> bool {
    let parts: Vec<&str> = pattern.split("...").collect();
    if parts.len() == 1 {
        return pattern == line;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !line.starts_with(first) || line.len() < first.len() + last.len() || !line.ends_with(last) {
        return false;
    }
    let mut rest = &line[first.len()..line.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(at) => rest = &rest[at + p.len()..],
            None => return false,
        }
    }
    true
}

fn is_shell(lang: &str) -> bool {
    matches!(lang, "sh" | "bash" | "shell" | "console" | "zsh")
}

fn not_run_reason(b: &Block) -> Option<&str> {
    b.info.strip_prefix("not run:").map(str::trim)
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs one console block in `dir` with `env`; returns each command's output lines.
async fn run_block(b: &Block, steps: &[Step], dir: &Path, env: &[(String, String)]) -> Vec<Vec<String>> {
    // Exported variables carry over from block to block through this file.
    let mut script =
        String::from("exec 2>&1 </dev/null\n[ -f \"$HOME/.readme-env\" ] && . \"$HOME/.readme-env\"\n");
    for s in steps {
        script.push_str(&s.command);
        script.push_str(&format!("\nprintf '\\n{END}\\n'\n"));
    }
    script.push_str("export -p >\"$HOME/.readme-env\"\n");
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(&script).current_dir(dir).env_clear().envs(env.iter().map(|(k, v)| (k, v)));
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn bash");
    let mut out = String::new();
    let mut stdout = child.stdout.take().expect("stdout piped");
    let read = tokio::time::timeout(BLOCK, async {
        stdout.read_to_string(&mut out).await.expect("read the block's output");
        child.wait().await.expect("wait for bash")
    })
    .await;
    if read.is_err() {
        panic!("README.md:{}: the block did not finish within {BLOCK:?}; it printed:\n{out}", b.line);
    }
    let mut outputs: Vec<Vec<String>> = out
        .split(&format!("\n{END}\n"))
        .map(|chunk| {
            let mut lines: Vec<String> = chunk.lines().map(|l| l.trim_end().to_owned()).collect();
            while lines.last().is_some_and(|l| l.is_empty()) {
                lines.pop();
            }
            lines
        })
        .collect();
    outputs.truncate(steps.len());
    outputs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shell_example_in_the_readme_works_as_written() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("read README.md");
    let all = blocks(&readme);

    let unmarked: Vec<String> = all
        .iter()
        .filter(|b| is_shell(&b.lang) && b.lang != "console" && not_run_reason(b).is_none_or(str::is_empty))
        .map(|b| format!("README.md:{}: ```{} {}", b.line, b.lang, b.info))
        .collect();
    assert!(
        unmarked.is_empty(),
        "shell blocks neither run (```console) nor marked `not run: REASON`:\n{}",
        unmarked.join("\n")
    );

    let site = Site::new();
    std::os::unix::fs::symlink(repo().join("schemas"), site.tmp.path().join("schemas"))
        .expect("link schemas/");
    let broker = site.start_as_make_run().await;
    let http = broker.http_addr().await;

    // Clients keep the README's default addresses; their own config files point them here.
    let config = site.tmp.path().join("config");
    std::fs::create_dir_all(&config).expect("config dir");
    let port = format!("-p {}\n", broker.addr.port());
    for tool in ["mosquitto_pub", "mosquitto_sub", "mosquitto_rr"] {
        std::fs::write(config.join(tool), &port).expect("mosquitto options file");
    }
    std::fs::write(
        config.join(".curlrc"),
        format!("connect-to = 127.0.0.1:9883:{http}\nconnect-to = localhost:9883:{http}\n"),
    )
    .expect(".curlrc");
    let bin = Path::new(env!("CARGO_BIN_EXE_dataloom")).parent().expect("binary dir").to_owned();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let env: Vec<(String, String)> = [
        ("PATH", path),
        ("HOME", site.tmp.path().display().to_string()),
        ("XDG_CONFIG_HOME", config.display().to_string()),
        ("CURL_HOME", config.display().to_string()),
        ("DATALOOM_HTTP__BIND", http.to_string()),
        ("LANG", "C.UTF-8".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();

    let mut ran = 0;
    for b in &all {
        if b.lang == "text" && b.info == "broker-log" {
            for want in &b.body {
                broker
                    .stderr
                    .wait_for(&format!("matching README.md:{}: {want}", b.line), |l| matches(want, l))
                    .await;
            }
            continue;
        }
        if b.lang != "console" || not_run_reason(b).is_some() {
            continue;
        }
        let steps = steps(b);
        let outputs = run_block(b, &steps, site.tmp.path(), &env).await;
        assert_eq!(outputs.len(), steps.len(), "README.md:{}: a command ended the block early", b.line);
        for (s, got) in steps.iter().zip(&outputs) {
            let same =
                got.len() == s.expected.len() && s.expected.iter().zip(got).all(|(w, g)| matches(w, g));
            assert!(
                same,
                "README.md:{}: `{}` printed\n{}\nbut the README says\n{}\nbroker log:\n{}",
                s.line,
                s.command,
                got.join("\n"),
                s.expected.join("\n"),
                broker.stderr.lines().join("\n")
            );
            ran += 1;
        }
    }
    assert!(ran >= 10, "only {ran} README commands ran; the console blocks went missing");
    broker.stop().await;
}

/// The lines between a file's `README: begin` and `README: end` marker lines.
fn marked_snippet(text: &str) -> Option<Vec<String>> {
    let mut lines = text.lines().skip_while(|l| !l.contains("README: begin")).skip(1);
    let snippet: Vec<String> =
        lines.by_ref().take_while(|l| !l.contains("README: end")).map(str::to_owned).collect();
    (!snippet.is_empty()).then_some(snippet)
}

#[test]
fn client_snippets_are_the_code_the_client_tests_run() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("read README.md");
    let mut shown = Vec::new();
    for b in blocks(&readme) {
        let Some(path) = b.info.strip_prefix("from ") else { continue };
        let text = std::fs::read_to_string(repo().join(path))
            .unwrap_or_else(|e| panic!("README.md:{}: cannot read {path}: {e}", b.line));
        let snippet = marked_snippet(&text).unwrap_or_else(|| panic!("{path} has no README markers"));
        assert_eq!(
            b.body, snippet,
            "README.md:{}: the snippet differs from {path} between its README markers",
            b.line
        );
        shown.push(path.to_owned());
    }
    for entry in std::fs::read_dir(repo().join("tests/clients")).expect("tests/clients") {
        let path = entry.expect("entry").path();
        let marked = std::fs::read_to_string(&path).ok().and_then(|t| marked_snippet(&t)).is_some();
        let rel = path.strip_prefix(repo()).expect("in the repo").display().to_string();
        assert!(
            !marked || shown.contains(&rel),
            "{rel} has README markers but README.md shows no `from {rel}` block"
        );
    }
    assert_eq!(shown.len(), 2, "the Clients section shows MQTT.js and paho-mqtt: {shown:?}");
}

#[test]
fn the_example_conventions_parse_as_documented() {
    let md = "x\n```console\n$ echo a \\\n  b\na b\n$ true\n```\n```sh not run: needs a second machine\nssh far\n```\n";
    let bs = blocks(md);
    assert_eq!(bs.len(), 2);
    let st = steps(&bs[0]);
    assert_eq!(st.len(), 2);
    assert_eq!(st[0].command, "echo a \\\n  b");
    assert_eq!(st[0].expected, ["a b"]);
    assert_eq!((st[0].line, st[1].line), (3, 6));
    assert_eq!(not_run_reason(&bs[1]), Some("needs a second machine"));
    assert!(matches("a ... c", "a b b c"));
    assert!(matches("...x", "yx") && !matches("...x", "xy"));
    assert!(!matches("a...a", "a"));
    assert!(matches("exact", "exact") && !matches("exact", "exact "));
}
