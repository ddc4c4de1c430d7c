//! Unit tests of the subscription trie: matching, the `$` rule, shared-subscription picks,
//! node cleanup and churn.

use super::*;

/// (key, options, shared) per hit, sorted.
fn hits(t: &SubscriptionTree<u64, u8>, topic: &str) -> Vec<(u64, u8, bool)> {
    let mut v = Vec::new();
    t.for_each_match(
        topic,
        |_, _| Fit::Now,
        |h| match h {
            Hit::Plain(k, o) => v.push((k, *o, false)),
            Hit::Shared(Some((k, o))) => v.push((k, *o, true)),
            Hit::Shared(None) => {}
        },
    );
    v.sort();
    v
}

#[test]
fn overlaps_and_replace() {
    let mut t = SubscriptionTree::new();
    assert_eq!(t.insert("a/b", 1u64, 0u8), None);
    assert_eq!(t.insert("a/+", 1, 1), None);
    assert_eq!(t.insert("a/#", 2, 2), None);
    assert_eq!(t.insert("+/b", 3, 3), None);
    assert_eq!(t.insert("a/b", 1, 9), Some(0));
    assert_eq!(t.len(), 4);
    assert_eq!(hits(&t, "a/b"), vec![(1, 1, false), (1, 9, false), (2, 2, false), (3, 3, false)]);
    assert_eq!(hits(&t, "a/c"), vec![(1, 1, false), (2, 2, false)]);
    assert_eq!(hits(&t, "b/b"), vec![(3, 3, false)]);
    assert!(hits(&t, "a/b/c").iter().all(|h| h.0 == 2));
}

#[test]
fn hash_matches_parent_and_empty_levels() {
    let mut t = SubscriptionTree::new();
    t.insert("a/#", 1u64, 0u8);
    t.insert("#", 2, 0);
    t.insert("a//b", 3, 0);
    t.insert("+/a", 4, 0);
    assert_eq!(hits(&t, "a").len(), 2);
    assert_eq!(hits(&t, "a//b").len(), 3);
    assert_eq!(hits(&t, "/a"), vec![(2, 0, false), (4, 0, false)]);
}

#[test]
fn dollar_rule() {
    let mut t = SubscriptionTree::new();
    t.insert("#", 1u64, 0u8);
    t.insert("+/uptime", 2, 0);
    t.insert("$SYS/#", 3, 0);
    t.insert("$SYS/+", 4, 0);
    t.insert_shared("g", "#", 5, 0);
    assert_eq!(hits(&t, "$SYS/uptime"), vec![(3, 0, false), (4, 0, false)]);
    assert_eq!(hits(&t, "x/uptime").len(), 3);
}

/// Calls per (key, group) over `n` publishes to `s/x` with members rated by `fit`, and
/// how many times a group had no member to pick.
fn tally(t: &SubscriptionTree<u64, u8>, n: usize, fit: fn(u64) -> Fit) -> (Vec<(u64, usize)>, usize) {
    let mut c: HashMap<u64, usize> = HashMap::new();
    let mut none = 0;
    for _ in 0..n {
        t.for_each_match(
            "s/x",
            |k, _| fit(k),
            |h| match h {
                Hit::Plain(k, _) => {
                    c.entry(k).or_default();
                }
                Hit::Shared(Some((k, _))) => *c.entry(k).or_default() += 1,
                Hit::Shared(None) => none += 1,
            },
        );
    }
    let mut v: Vec<_> = c.into_iter().collect();
    v.sort();
    (v, none)
}

#[test]
fn shared_round_robin() {
    let mut t = SubscriptionTree::new();
    for k in 1u64..=3 {
        assert_eq!(t.insert_shared("g", "s/+", k, 0u8), None);
    }
    t.insert_shared("h", "s/#", 9, 0);
    t.insert("s/x", 7, 0);
    assert_eq!(t.insert_shared("g", "s/+", 2, 1), Some(0));
    assert_eq!(t.len(), 5);
    let shared: Vec<u64> = hits(&t, "s/x").into_iter().filter(|h| h.2).map(|h| h.0).collect();
    assert_eq!(shared.len(), 2, "one member of g and 9 of h: {shared:?}");
    assert!(shared.contains(&9));
    let all = tally(&t, 300, |_| Fit::Now);
    assert_eq!(all, (vec![(1, 100), (2, 100), (3, 100), (7, 0), (9, 300)], 0));
    // member 2 cannot take it now: 1 and 3 alternate, 2 gets nothing
    let now = |k| if k == 2 { Fit::Later } else { Fit::Now };
    assert_eq!(tally(&t, 100, now), (vec![(1, 50), (3, 50), (7, 0), (9, 100)], 0));
    // only 9 fits now; in g only 2 can keep it for later: all to 2
    let later = |k| match k {
        2 => Fit::Later,
        9 => Fit::Now,
        _ => Fit::Lossy,
    };
    assert_eq!(tally(&t, 10, later), (vec![(2, 10), (7, 0), (9, 10)], 0));
    // nobody fits better than lossy: still rotated
    let lossy = |k| if k == 9 { Fit::Now } else { Fit::Lossy };
    assert_eq!(tally(&t, 3, lossy), (vec![(1, 1), (2, 1), (3, 1), (7, 0), (9, 3)], 0));
    // nobody in g may take it
    let never = |k| if k == 9 { Fit::Now } else { Fit::Never };
    assert_eq!(tally(&t, 4, never), (vec![(7, 0), (9, 4)], 4));
    assert_eq!(
        t.pick_shared("g", "s/+", |k, _| if k == 3 { Fit::Now } else { Fit::Later }).map(|p| p.0),
        Some(3)
    );
    assert!(t.pick_shared("g", "s/#", |_, _| Fit::Now).is_none(), "no such group");
    assert!(t.pick_shared("g", "s/+", |_, _| Fit::Never).is_none());

    assert_eq!(t.remove_shared("g", "s/+", 2), Some(1));
    assert_eq!(t.remove_shared("g", "s/+", 2), None);
    assert_eq!(t.remove_shared("nope", "s/+", 1), None);
    assert_eq!(t.len(), 4);
}

#[test]
fn removal_cleans_nodes() {
    let mut t = SubscriptionTree::new();
    assert_eq!(t.node_count(), 1);
    t.insert("a/b/c/d", 1u64, 0u8);
    t.insert("a/b/+/#", 2, 0);
    t.insert("a/b", 3, 0);
    t.insert_shared("g", "x/y/z", 4, 0);
    t.insert("#", 5, 0);
    let full = t.node_count();
    assert_eq!(full, 1 + 4 + 1 + 3);
    assert_eq!(t.remove("a/b/c/d", 9), None);
    assert_eq!(t.remove("a/b/c/d", 1), Some(0));
    assert_eq!(t.node_count(), full - 2);
    assert_eq!(t.remove("a/b/+/#", 2), Some(0));
    assert_eq!(t.node_count(), full - 3);
    assert_eq!(t.remove("a/b", 3), Some(0));
    assert_eq!(t.remove_shared("g", "x/y/z", 4), Some(0));
    assert_eq!(t.remove("#", 5), Some(0));
    assert_eq!(t.remove("#", 5), None);
    assert_eq!(t.remove("q/r", 5), None);
    assert_eq!(t.node_count(), 1);
    assert!(t.is_empty());
}

#[test]
fn churn_10k_filters() {
    let mut t = SubscriptionTree::new();
    for i in 0..10_000u64 {
        t.insert(&format!("dev/{}/sensor/{}", i % 100, i), i, 0u8);
    }
    t.insert("dev/+/sensor/#", 99_999, 1);
    assert_eq!(t.len(), 10_001);
    assert_eq!(hits(&t, "dev/7/sensor/507"), vec![(507, 0, false), (99_999, 1, false)]);
    assert_eq!(hits(&t, "dev/7/sensor/508"), vec![(99_999, 1, false)]);
    let removed = (0..10_000u64).filter(|&i| t.remove(&format!("dev/{}/sensor/{i}", i % 100), i).is_some());
    assert_eq!(removed.count(), 10_000);
    assert_eq!(t.remove("dev/+/sensor/#", 99_999), Some(1));
    assert_eq!(t.node_count(), 1);
    assert!(t.is_empty());
}
