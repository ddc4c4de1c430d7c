//! Permissions compiled once per connection: a key's (or the anonymous) filter lists with
//! `%c` and `%u` replaced, split into levels, so that every check on the publish and delivery
//! path is a walk over a few small level lists with no allocation.
//!
//! Rules: deny wins. `$SYS/` and `$dead/` are readable only by admins; `$SYS/` is written by
//! the broker alone, never by a client, unrestricted or admin (MQTT 5 §4.7.2: the server
//! SHOULD prevent clients from using such topic names); `$schema/` is writable only by admins
//! (and readable by them). As in MQTT, a wildcard in the first level of a
//! permission never matches a topic starting with `$` (so `#` does not grant `$schema/`).
//! A placeholder value is always one literal level: a client id containing `/`, `+` or `#`
//! cannot widen a permission.

/// One level of a compiled filter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Lit(Box<str>),
    Plus,
    Hash,
}

/// A compiled permission filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    levels: Box<[Level]>,
}

impl Filter {
    /// Compiles `filter` with `%c` → `client_id`, `%u` → `key` in literal levels; `None` when
    /// it uses `%u` and there is no key (anonymous), so it grants or denies nothing.
    pub fn compile(filter: &str, client_id: &str, key: Option<&str>) -> Option<Filter> {
        let mut levels = Vec::new();
        for l in filter.split('/') {
            levels.push(match l {
                "+" => Level::Plus,
                "#" => Level::Hash,
                l if l.contains('%') => {
                    if l.contains("%u") && key.is_none() {
                        return None;
                    }
                    Level::Lit(l.replace("%c", client_id).replace("%u", key.unwrap_or_default()).into())
                }
                l => Level::Lit(l.into()),
            });
        }
        Some(Filter { levels: levels.into() })
    }

    /// True when topic name `topic` matches.
    pub fn matches(&self, topic: &str) -> bool {
        let dollar = topic.starts_with('$');
        let mut t = topic.split('/');
        for (i, l) in self.levels.iter().enumerate() {
            match l {
                Level::Hash => return !(i == 0 && dollar),
                Level::Plus => {
                    if t.next().is_none() || (i == 0 && dollar) {
                        return false;
                    }
                }
                Level::Lit(x) => {
                    if t.next() != Some(x) {
                        return false;
                    }
                }
            }
        }
        t.next().is_none()
    }

    /// True when every topic the subscription filter `filter` matches is matched by `self`.
    pub fn covers(&self, filter: &str) -> bool {
        let dollar = filter.starts_with('$');
        let mut f = filter.split('/');
        for (i, l) in self.levels.iter().enumerate() {
            match l {
                Level::Hash => return !(i == 0 && dollar),
                Level::Plus => match f.next() {
                    None | Some("#") => return false,
                    Some(_) if i == 0 && dollar => return false,
                    Some(_) => {}
                },
                Level::Lit(x) => {
                    if f.next() != Some(x) {
                        return false;
                    }
                }
            }
        }
        f.next().is_none()
    }
}

/// A client-id pattern: `*` any run of characters, `?` one character, `%u` the key id.
#[derive(Debug, Clone)]
pub struct Glob(Box<str>);

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        Glob(pattern.into())
    }

    /// True when `s` matches, with `%u` standing for `key`.
    pub fn matches(&self, s: &str, key: &str) -> bool {
        let p: Vec<char> = self.0.replace("%u", key).chars().collect();
        let s: Vec<char> = s.chars().collect();
        // Iterative wildcard matching with single backtrack point (linear for `*` patterns).
        let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
        while si < s.len() {
            match p.get(pi) {
                Some('*') => {
                    star = Some(pi);
                    mark = si;
                    pi += 1;
                }
                Some(&c) if c == '?' || c == s[si] => {
                    pi += 1;
                    si += 1;
                }
                _ => match star {
                    Some(sp) => {
                        pi = sp + 1;
                        mark += 1;
                        si = mark;
                    }
                    None => return false,
                },
            }
        }
        p[pi..].iter().all(|&c| c == '*')
    }
}

/// The permission lists of a key or of anonymous clients, before compilation.
#[derive(Debug, Clone, Copy)]
pub struct Lists<'a> {
    /// Filters it may publish to.
    pub publish: &'a [String],
    /// Filters it may subscribe to.
    pub subscribe: &'a [String],
    /// Filters it may never publish to.
    pub deny_publish: &'a [String],
    /// Filters it may never read.
    pub deny_subscribe: &'a [String],
    /// Admin role (reserved trees).
    pub admin: bool,
}

/// What one connection may do.
#[derive(Debug, Clone, Default)]
pub struct Perms {
    /// Everything allowed (no keys exist and the client is local): no check runs.
    unrestricted: bool,
    admin: bool,
    publish: Vec<Filter>,
    subscribe: Vec<Filter>,
    deny_publish: Vec<Filter>,
    deny_subscribe: Vec<Filter>,
}

/// The reserved tree a topic or filter is in, by its first level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tree {
    /// `$SYS`: admins read; nobody writes.
    Sys,
    /// `$dead`: admins read; writes follow the lists, admins only.
    AdminRead,
    /// `$schema`: admins write and read; others read by their lists.
    Schema,
    Other,
}

fn tree(topic: &str) -> Tree {
    if !topic.starts_with('$') {
        return Tree::Other;
    }
    match topic.split('/').next() {
        Some("$SYS") => Tree::Sys,
        Some("$dead") => Tree::AdminRead,
        Some("$schema") => Tree::Schema,
        _ => Tree::Other,
    }
}

impl Perms {
    /// Everything allowed, admin included.
    pub fn unrestricted() -> Perms {
        Perms { unrestricted: true, admin: true, ..Perms::default() }
    }

    /// Compiles `lists` for `client_id` and `key` (`None` = anonymous).
    pub fn compile(lists: Lists<'_>, client_id: &str, key: Option<&str>) -> Perms {
        let c = |v: &[String]| v.iter().filter_map(|f| Filter::compile(f, client_id, key)).collect();
        Perms {
            unrestricted: false,
            admin: lists.admin,
            publish: c(lists.publish),
            subscribe: c(lists.subscribe),
            deny_publish: c(lists.deny_publish),
            deny_subscribe: c(lists.deny_subscribe),
        }
    }

    /// True when no check is needed at all.
    pub fn is_unrestricted(&self) -> bool {
        self.unrestricted
    }

    /// True for the admin role.
    pub fn is_admin(&self) -> bool {
        self.admin
    }

    /// May publish to topic name `topic` (also a will topic). Never `$SYS/`.
    pub fn may_publish(&self, topic: &str) -> bool {
        if self.unrestricted {
            return tree(topic) != Tree::Sys;
        }
        if self.deny_publish.iter().any(|f| f.matches(topic)) {
            return false;
        }
        match tree(topic) {
            Tree::Sys => false,
            Tree::Schema => self.admin,
            Tree::AdminRead => self.admin && self.publish.iter().any(|f| f.matches(topic)),
            Tree::Other => self.publish.iter().any(|f| f.matches(topic)),
        }
    }

    /// May subscribe to `filter` (without `$share/group/`): some subscribe filter covers it
    /// and no deny filter does. A filter that only overlaps a deny filter is granted; the
    /// denied topics are then dropped on delivery ([`Perms::may_read`]).
    pub fn may_subscribe(&self, filter: &str) -> bool {
        self.read_rule(filter, Filter::covers)
    }

    /// May receive a message on topic name `topic` (checked on every delivery, retained
    /// messages on SUBSCRIBE included).
    pub fn may_read(&self, topic: &str) -> bool {
        self.read_rule(topic, Filter::matches)
    }

    /// The rule of [`Perms::may_subscribe`] and [`Perms::may_read`] for `s`, a filter or a
    /// topic name; `hits` is [`Filter::covers`] or [`Filter::matches`] accordingly.
    fn read_rule(&self, s: &str, hits: fn(&Filter, &str) -> bool) -> bool {
        if self.unrestricted {
            return true;
        }
        if self.deny_subscribe.iter().any(|f| hits(f, s)) {
            return false;
        }
        match tree(s) {
            Tree::Sys | Tree::AdminRead => self.admin,
            Tree::Schema => self.admin || self.subscribe.iter().any(|f| hits(f, s)),
            Tree::Other => self.subscribe.iter().any(|f| hits(f, s)),
        }
    }
}

impl crate::model::ReadAccess for Perms {
    fn may_read(&self, topic: &str) -> bool {
        Perms::may_read(self, topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> Filter {
        Filter::compile(s, "dev1", Some("key1")).expect("compiles")
    }

    #[test]
    fn matching_follows_mqtt() {
        assert!(f("a/+/c").matches("a/b/c"));
        assert!(!f("a/+/c").matches("a/b/c/d"));
        assert!(f("a/#").matches("a"));
        assert!(f("a/#").matches("a/b/c"));
        assert!(!f("#").matches("$SYS/x"));
        assert!(!f("+/x").matches("$foo/x"));
        assert!(f("$SYS/#").matches("$SYS/broker/uptime"));
    }

    #[test]
    fn covering() {
        assert!(f("a/#").covers("a/+/c"));
        assert!(f("a/#").covers("a"));
        assert!(f("a/+").covers("a/b"));
        assert!(!f("a/+").covers("a/#"));
        assert!(!f("a/b").covers("a/+"));
        assert!(!f("#").covers("$schema/#"));
        assert!(!f("a").covers("a/#"));
    }

    #[test]
    fn placeholders_are_literal_levels() {
        assert!(f("d/%c/#").matches("d/dev1/x"));
        assert!(f("u/%u").matches("u/key1"));
        let evil = Filter::compile("d/%c", "+", None).expect("compiles");
        assert!(!evil.matches("d/x"));
        assert!(Filter::compile("u/%u", "c", None).is_none());
    }

    #[test]
    fn deny_wins_and_reserved_trees() {
        let all = ["#".to_string()];
        let deny = ["secret/#".to_string()];
        let lists = Lists {
            publish: &all,
            subscribe: &all,
            deny_publish: &deny,
            deny_subscribe: &deny,
            admin: false,
        };
        let p = Perms::compile(lists, "c", Some("k"));
        assert!(p.may_publish("a/b"));
        assert!(!p.may_publish("secret/x"));
        assert!(p.may_subscribe("#"));
        assert!(!p.may_subscribe("secret/+"));
        assert!(!p.may_read("secret/x"));
        assert!(!p.may_publish("$schema/a"));
        assert!(!p.may_subscribe("$SYS/#"));
        let admin = Perms::compile(Lists { admin: true, ..lists }, "c", Some("k"));
        assert!(admin.may_publish("$schema/a"));
        assert!(admin.may_subscribe("$SYS/#"));
        assert!(admin.may_read("$dead/x"));
    }

    #[test]
    fn nobody_writes_sys() {
        let all = ["#".to_string(), "$SYS/#".to_string(), "$dead/#".to_string()];
        let lists =
            Lists { publish: &all, subscribe: &all, deny_publish: &[], deny_subscribe: &[], admin: true };
        let admin = Perms::compile(lists, "c", Some("k"));
        for p in [&admin, &Perms::unrestricted()] {
            assert!(!p.may_publish("$SYS/broker/uptime"));
            assert!(!p.may_publish("$SYS"));
            assert!(p.may_read("$SYS/broker/uptime"), "admins read it");
            assert!(p.may_publish("a/$SYS/x"), "only the $SYS tree");
        }
        assert!(Perms::unrestricted().may_publish("$SYSTEM/x"));
        assert!(admin.may_publish("$dead/x"), "$dead follows the lists");
    }

    #[test]
    fn globs() {
        let g = Glob::new("dev-*-?");
        assert!(g.matches("dev-abc-1", "k"));
        assert!(!g.matches("dev-abc-12", "k"));
        assert!(Glob::new("*").matches("", "k"));
        assert!(Glob::new("%u").matches("me", "me"));
        assert!(!Glob::new("%u").matches("you", "me"));
    }
}
