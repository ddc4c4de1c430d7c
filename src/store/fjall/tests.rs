//! Scenario tests of the fjall store: each reopens the directory in a new block to simulate a
//! restart.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::model::SubOptions;
use crate::model::{Delivery, Message};
use crate::store::SessionRecord;
use dataloom_codec::{Properties, QoS, RetainHandling};

fn open(dir: &Path) -> FjallStore {
    FjallStore::open(dir, Durability::Fsync).unwrap()
}

fn msg(topic: &str, payload: &str) -> Arc<Message> {
    Arc::new(Message {
        topic: topic.into(),
        topic_bytes: Bytes::copy_from_slice(topic.as_bytes()),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Properties { content_type: Some("text/plain".into()), ..Properties::default() },
        expires_at: None,
        publisher: Some(1),
        charge: Default::default(),
        stamp: crate::model::Stamp::default(),
    })
}

fn expiring(topic: &str, payload: &str, in_: Duration) -> Arc<Message> {
    let mut m = (*msg(topic, payload)).clone();
    m.expires_at = Some(Instant::now() + in_);
    Arc::new(m)
}

fn delivery(m: Arc<Message>) -> Delivery {
    Delivery {
        msg: m,
        qos: QoS::AtLeastOnce,
        retain: false,
        sub_ids: vec![3],
        seq: None,
        share: None,
        snapshot: false,
    }
}

fn session(id: &str) -> SessionRecord {
    SessionRecord {
        client_id: id.into(),
        expiry: 3600,
        owner: Some(crate::model::SessionOwner::Key(id.into())),
        offline_since: Some(1_790_000_000_000),
        subscriptions: vec![(
            "a/+".into(),
            SubOptions {
                qos: QoS::ExactlyOnce,
                no_local: true,
                retain_as_published: false,
                retain_handling: RetainHandling::OnNewSubscribe,
                sub_id: Some(3),
            },
        )],
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
}

fn commit(store: &FjallStore, ops: Vec<Op>) {
    block_on(store.submit(ops, true).wait()).unwrap();
}

fn retained(store: &FjallStore) -> Vec<(String, String)> {
    let mut v: Vec<_> = store
        .recover()
        .unwrap()
        .retained
        .iter()
        .map(|m| (m.topic.to_string(), String::from_utf8(m.payload.to_vec()).unwrap()))
        .collect();
    v.sort();
    v
}

fn pair(t: &str, p: &str) -> (String, String) {
    (t.into(), p.into())
}

#[test]
fn the_state_revision_survives_reopen_even_when_its_record_was_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let stamped = |topic: &str, revision: u64| {
        let mut m = (*msg(topic, "v")).clone();
        m.stamp = crate::model::Stamp { revision, unix_ms: 1_790_000_000_000 + revision };
        Arc::new(m)
    };
    {
        let store = open(dir.path());
        assert_eq!(store.recover().unwrap().revision, 0, "a new store");
        commit(&store, vec![Op::PutRetained(stamped("r/1", 1)), Op::PutRetained(stamped("r/2", 2))]);
        commit(&store, vec![Op::DeleteRetained("r/2".into()), Op::Revision(3)]);
    }
    {
        let store = open(dir.path());
        let r = store.recover().unwrap();
        assert_eq!(r.revision, 3, "the deletion's revision, not the highest record's");
        assert_eq!(r.retained[0].stamp, crate::model::Stamp { revision: 1, unix_ms: 1_790_000_000_001 });
        commit(&store, vec![Op::PutRetained(stamped("r/3", 4))]);
    }
    assert_eq!(open(dir.path()).recover().unwrap().revision, 4, "a newer record beats the stored counter");
}

#[test]
fn retained_put_replace_delete_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        commit(&store, vec![Op::PutRetained(msg("a/1", "one")), Op::PutRetained(msg("a/2", "two"))]);
        commit(&store, vec![Op::PutRetained(msg("a/1", "uno"))]);
        commit(&store, vec![Op::PutRetained(msg("a/3", "three"))]);
        commit(&store, vec![Op::DeleteRetained("a/3".into())]);
    }
    {
        let store = open(dir.path());
        assert_eq!(retained(&store), vec![pair("a/1", "uno"), pair("a/2", "two")]);
        let r = store.recover().unwrap();
        let m = r.retained.iter().find(|m| &*m.topic == "a/1").unwrap();
        assert_eq!(m.properties.content_type.as_deref(), Some("text/plain"));
        assert_eq!((m.qos, m.retain, m.publisher), (QoS::AtLeastOnce, true, None));
        commit(&store, vec![Op::DeleteRetained("a/1".into())]);
    }
    {
        let store = open(dir.path());
        assert_eq!(retained(&store), vec![pair("a/2", "two")]);
    }
}

#[test]
fn writes_of_one_key_in_one_group_keep_the_last() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        // Non-durable submissions queue up behind each other and usually share one group.
        for i in 0..50 {
            drop(store.submit(vec![Op::PutRetained(msg("k", &i.to_string()))], false));
            drop(store.submit(vec![Op::DeleteRetained("k".into())], false));
        }
        drop(store.submit(vec![Op::PutRetained(msg("k", "last"))], false));
        commit(&store, vec![Op::PutRetained(msg("gone", "x")), Op::DeleteRetained("gone".into())]);
    }
    let store = open(dir.path());
    assert_eq!(retained(&store), vec![pair("k", "last")]);
}

#[test]
fn session_queue_inflight_and_qos2_survive_reopen_and_delete_session_removes_everything() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        commit(&store, vec![Op::PutSession(session("c1")), Op::PutSession(session("c1b"))]);
        let mut ops = Vec::new();
        for seq in [3u64, 1, 2, 256] {
            ops.push(Op::Enqueue {
                client_id: "c1".into(),
                seq,
                delivery: delivery(msg("a/b", &format!("m{seq}"))),
            });
        }
        // In flight in the same group as its Enqueue: the update must see the pending record.
        ops.push(Op::SetInflight { client_id: "c1".into(), seq: 1, pkid: 10, released: false });
        commit(&store, ops);
        commit(
            &store,
            vec![
                Op::SetInflight { client_id: "c1".into(), seq: 2, pkid: 11, released: false },
                Op::Dequeue { client_id: "c1".into(), seq: 3 },
                Op::PutIncomingQos2 { client_id: "c1".into(), pkid: 7 },
                Op::PutIncomingQos2 { client_id: "c1".into(), pkid: 8 },
                Op::DeleteIncomingQos2 { client_id: "c1".into(), pkid: 8 },
                // In flight after it left the queue: nothing to update.
                Op::SetInflight { client_id: "c1".into(), seq: 3, pkid: 12, released: false },
                Op::Enqueue { client_id: "c1b".into(), seq: 1, delivery: delivery(msg("x", "other")) },
                Op::PutIncomingQos2 { client_id: "c1b".into(), pkid: 1 },
            ],
        );
        commit(&store, vec![Op::SetInflight { client_id: "c1".into(), seq: 2, pkid: 11, released: true }]);
    }
    {
        let store = open(dir.path());
        let r = store.recover().unwrap();
        assert_eq!(r.sessions.len(), 2);
        let s = r.sessions.iter().find(|s| &*s.record.client_id == "c1").unwrap();
        assert_eq!(s.record, session("c1"));
        let q: Vec<_> = s
            .queue
            .iter()
            .map(|m| (m.seq, String::from_utf8(m.delivery.msg.payload.to_vec()).unwrap(), m.inflight))
            .collect();
        assert_eq!(
            q,
            vec![
                (1, "m1".into(), Some((10, false))),
                (2, "m2".into(), Some((11, true))),
                (256, "m256".into(), None),
            ]
        );
        assert_eq!(s.queue[0].delivery.sub_ids, vec![3]);
        assert_eq!(s.queue[2].delivery.seq, Some(256));
        assert_eq!(s.incoming_qos2, vec![7]);

        commit(&store, vec![Op::DeleteSession("c1".into())]);
    }
    {
        let store = open(dir.path());
        let r = store.recover().unwrap();
        assert_eq!(r.sessions.len(), 1);
        let s = &r.sessions[0];
        assert_eq!(&*s.record.client_id, "c1b");
        assert_eq!(s.queue.len(), 1);
        assert_eq!(s.incoming_qos2, vec![1]);
        assert_eq!(store.ks.queue.len().unwrap(), 1);
        assert_eq!(store.ks.qos2.len().unwrap(), 1);
    }
}

#[test]
fn delete_session_in_the_same_group_removes_pending_queue_entries() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        commit(
            &store,
            vec![
                Op::PutSession(session("c")),
                Op::Enqueue { client_id: "c".into(), seq: 1, delivery: delivery(msg("t", "1")) },
                Op::PutIncomingQos2 { client_id: "c".into(), pkid: 1 },
                Op::DeleteSession("c".into()),
                Op::PutSession(session("c")),
                Op::Enqueue { client_id: "c".into(), seq: 2, delivery: delivery(msg("t", "2")) },
            ],
        );
    }
    let store = open(dir.path());
    let r = store.recover().unwrap();
    assert_eq!(r.sessions.len(), 1);
    assert_eq!(r.sessions[0].queue.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![2]);
    assert!(r.sessions[0].incoming_qos2.is_empty());
}

#[test]
fn expired_messages_are_not_recovered_and_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        commit(
            &store,
            vec![
                Op::PutRetained(expiring("short", "x", Duration::from_millis(50))),
                Op::PutRetained(expiring("long", "y", Duration::from_secs(3600))),
                Op::PutSession(session("c")),
                Op::Enqueue {
                    client_id: "c".into(),
                    seq: 1,
                    delivery: delivery(expiring("q", "1", Duration::from_millis(50))),
                },
                Op::Enqueue {
                    client_id: "c".into(),
                    seq: 2,
                    delivery: delivery(expiring("q", "2", Duration::from_secs(3600))),
                },
            ],
        );
    }
    std::thread::sleep(Duration::from_millis(120));
    {
        let store = open(dir.path());
        let r = store.recover().unwrap();
        assert_eq!(r.retained.len(), 1);
        assert_eq!(&*r.retained[0].topic, "long");
        assert!(r.retained[0].remaining_expiry(Instant::now()).is_some_and(|s| s > 3500));
        assert_eq!(r.sessions[0].queue.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![2]);
    }
    let store = open(dir.path());
    assert_eq!(store.ks.retained.len().unwrap(), 1);
    assert_eq!(store.ks.queue.len().unwrap(), 1);
}

#[test]
fn second_open_of_the_same_dir_is_locked_while_the_first_is_alive() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path());
    match FjallStore::open(dir.path(), Durability::Fsync) {
        Err(StoreError::Locked { path }) => assert_eq!(path, dir.path().display().to_string()),
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(first);
    open(dir.path());
}

#[test]
fn newer_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store.ks.meta.insert(FORMAT_KEY, (FORMAT_VERSION + 1).to_be_bytes()).unwrap();
    }
    match FjallStore::open(dir.path(), Durability::Fsync) {
        Err(StoreError::NewerFormat { found, supported, .. }) => {
            assert_eq!((found, supported), (FORMAT_VERSION + 1, FORMAT_VERSION));
        }
        other => panic!("expected NewerFormat, got {other:?}"),
    }
}

#[test]
fn garbage_record_is_corrupt_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        commit(&store, vec![Op::PutRetained(msg("fine", "x"))]);
        store.ks.retained.insert("bad/topic", [1u8, 0xff, 0xff]).unwrap();
    }
    {
        let store = open(dir.path());
        match store.recover() {
            Err(StoreError::Corrupt { message, .. }) => {
                assert!(message.contains("retained/\"bad/topic\""), "{message}")
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        store.ks.retained.remove("bad/topic").unwrap();
        store.ks.queue.insert("no-separator", [1u8]).unwrap();
    }
    let store = open(dir.path());
    assert!(matches!(store.recover(), Err(StoreError::Corrupt { .. })));
}

#[test]
fn concurrent_durable_submissions_are_group_committed() {
    let dir = tempfile::tempdir().unwrap();
    const THREADS: usize = 8;
    const PER_THREAD: usize = 125;
    {
        let store = Arc::new(open(dir.path()));
        let before = store.batches_committed();
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                    // Each thread keeps a window of submissions in flight, like many connections.
                    let commits: Vec<_> = (0..PER_THREAD)
                        .map(|i| store.submit(vec![Op::PutRetained(msg(&format!("t/{t}/{i}"), "v"))], true))
                        .collect();
                    for c in commits {
                        rt.block_on(c.wait()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let batches = store.batches_committed() - before;
        eprintln!("{} durable submissions in {batches} group commits", THREADS * PER_THREAD);
        assert!(
            batches < (THREADS * PER_THREAD) as u64,
            "{batches} batches for {} submissions",
            THREADS * PER_THREAD
        );
        assert!(batches > 0);
    }
    let store = open(dir.path());
    assert_eq!(store.recover().unwrap().retained.len(), THREADS * PER_THREAD);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn durable_submissions_from_many_tasks_all_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store.submit(vec![Op::PutRetained(msg(&format!("k/{i}"), "v"))], true).wait().await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert!(store.batches_committed() < 1000);
    assert_eq!(store.recover().unwrap().retained.len(), 1000);
}

#[test]
fn buffered_commits_resolve_once_written_and_survive_close() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = FjallStore::open(dir.path(), Durability::Buffered).unwrap();
        for i in 0..100 {
            let commit = store.submit(vec![Op::PutRetained(msg(&format!("b/{i}"), "v"))], true);
            // It waits for the write to the OS (a process crash cannot lose it), not an fsync.
            block_on(commit.wait()).unwrap();
        }
        store.close().unwrap();
        // Closed: later durable submissions fail instead of hanging.
        let late_dir = tempfile::tempdir().unwrap();
        let late = FjallStore::open(late_dir.path(), Durability::Fsync).unwrap();
        late.close().unwrap();
        assert!(block_on(late.submit(vec![Op::DeleteRetained("x".into())], true).wait()).is_err());
    }
    let store = open(dir.path());
    assert_eq!(store.recover().unwrap().retained.len(), 100);
}

#[test]
fn buffered_writes_are_synced_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let store = FjallStore::open(dir.path(), Durability::Buffered).unwrap();
    drop(store.submit(vec![Op::PutRetained(msg("b", "v"))], true));
    std::thread::sleep(writer::SYNC_INTERVAL * 3);
    // The group was committed; the sync timer found the writer idle and synced it.
    assert_eq!(store.batches_committed(), 1);
    assert!(store.disk_bytes() > 0);
    assert!(store.poisoned().is_none());
}

#[test]
fn client_ids_sharing_a_prefix_stay_apart() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    commit(
        &store,
        vec![
            Op::PutSession(session("a")),
            Op::PutSession(session("ab")),
            Op::PutSession(session("a\0b")),
            Op::Enqueue { client_id: "a".into(), seq: 1, delivery: delivery(msg("t", "a")) },
            Op::Enqueue { client_id: "ab".into(), seq: 1, delivery: delivery(msg("t", "ab")) },
            Op::Enqueue { client_id: "a\0b".into(), seq: 1, delivery: delivery(msg("t", "a0b")) },
            Op::PutIncomingQos2 { client_id: "a\0b".into(), pkid: 5 },
        ],
    );
    commit(&store, vec![Op::DeleteSession("a".into())]);
    let r = store.recover().unwrap();
    let mut left: Vec<_> = r
        .sessions
        .iter()
        .map(|s| (s.record.client_id.to_string(), s.queue.len(), s.incoming_qos2.clone()))
        .collect();
    left.sort();
    assert_eq!(left, vec![("a\0b".into(), 1, vec![5]), ("ab".into(), 1, vec![])]);
}

#[test]
fn oversized_keys_are_refused_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let long: Arc<str> = "x".repeat(MAX_KEY_LEN).into();
    let r = block_on(store.submit(vec![Op::PutIncomingQos2 { client_id: long, pkid: 1 }], true).wait());
    assert!(matches!(r, Err(StoreError::Io { .. })));
    assert!(store.poisoned().is_none());
    commit(&store, vec![Op::PutRetained(msg("ok", "v"))]);
}

#[test]
#[ignore = "timing: run with --release --ignored"]
fn recovering_100k_retained_is_fast() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = FjallStore::open(dir.path(), Durability::Buffered).unwrap();
        for chunk in 0..100 {
            let ops = (0..1000)
                .map(|i| Op::PutRetained(msg(&format!("sensors/{chunk}/{i}/temp"), "{\"t\":21.5}")))
                .collect();
            drop(store.submit(ops, false));
        }
    }
    let store = open(dir.path());
    let t = Instant::now();
    let r = store.recover().unwrap();
    let took = t.elapsed();
    assert_eq!(r.retained.len(), 100_000);
    eprintln!("recovered 100k retained in {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
}

fn entry(topic: &str, payload: &str, revision: u64, unix_ms: u64) -> Op {
    let mut m = (*msg(topic, payload)).clone();
    m.stamp = crate::model::Stamp { revision, unix_ms };
    Op::AppendHistory(Arc::new(m))
}

fn payloads(chunk: &crate::store::HistoryChunk) -> Vec<String> {
    chunk.entries.iter().map(|m| String::from_utf8_lossy(&m.payload).into_owned()).collect()
}

#[test]
fn history_reads_back_after_reopen_by_revision_topic_time_and_retention() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        commit(&s, vec![entry("a", "a1", 1, 1000), entry("b", "b1", 2, 2000), entry("a", "a2", 3, 3000)]);
        commit(&s, vec![entry("a", "a3", 4, 4000)]);
        assert_eq!(s.history_watch().map(|w| *w.borrow()), Some(4), "the writer reports what is readable");
    }
    let s = open(dir.path());
    assert_eq!(s.recover().unwrap().revision, 4, "history revisions count after a restart");
    let all = s.history_scan(0, u64::MAX, 10, &|_| true).unwrap();
    assert_eq!((payloads(&all), all.next), (vec!["a1".into(), "b1".into(), "a2".into(), "a3".into()], None));
    let page = s.history_scan(0, u64::MAX, 2, &|t| t == "a").unwrap();
    assert_eq!((payloads(&page), page.next), (vec!["a1".into(), "a2".into()], Some(4)));
    let a = s.history_of("a", 2, 3, 10).unwrap();
    assert_eq!(payloads(&a), ["a2"]);
    assert_eq!(a.entries[0].stamp, crate::model::Stamp { revision: 3, unix_ms: 3000 });
    let times: Vec<u64> =
        [0, 1000, 1001, 3000, 4000, 4001].iter().map(|&t| s.history_start_at(t).unwrap()).collect();
    assert_eq!(times, [1, 1, 2, 3, 4, 5]);
    assert_eq!(s.history_last(2, Some("a"), &|_| true).unwrap(), 3);
    assert_eq!(s.history_last(3, None, &|_| true).unwrap(), 2);
    assert_eq!(s.history_last(9, None, &|_| true).unwrap(), 0);

    let keep_one = |t: &str| (t == "a").then_some(crate::store::Retention { keep: 2, not_before_ms: 0 });
    let mut gone = s.history_prunable(None, &keep_one, 100).unwrap();
    gone.sort();
    assert_eq!(gone, [(Arc::from("a"), 1), (Arc::from("b"), 2)], "beyond keep, and a topic no rule governs");
    let ops = gone.into_iter().map(|(topic, revision)| Op::DeleteHistory { topic, revision }).collect();
    commit(&s, ops);
    assert_eq!(payloads(&s.history_scan(0, u64::MAX, 10, &|_| true).unwrap()), ["a2", "a3"]);
    let young = |_: &str| Some(crate::store::Retention { keep: u64::MAX, not_before_ms: 3500 });
    assert_eq!(s.history_prunable(Some("a"), &young, 100).unwrap(), [(Arc::from("a"), 3)]);
}
