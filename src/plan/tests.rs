use super::*;
use crate::tree::Entry;
use proptest::prelude::*;
use std::collections::BTreeMap;

/// An in-memory tree: key -> (kind, mode, mtime secs, content tag).
type Model = BTreeMap<String, (Kind, Option<u32>, i64, u8)>;

fn manifest_of(m: &Model) -> Manifest {
    // BTreeMap order on '/'-joined keys is not pre-order for names containing
    // characters below '/', so sort by components.
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort_by(|a, b| a.split('/').cmp(b.split('/')));
    let mut ids: HashMap<&str, u32> = HashMap::new();
    let root = m.get("").unwrap();
    let mut entries = vec![Entry {
        parent: 0,
        name: String::new(),
        kind: Kind::Dir,
        mode: root.1,
        mtime: Timestamp {
            secs: root.2,
            nanos: 0,
        },
    }];
    ids.insert("", 0);
    for k in keys.into_iter().filter(|k| !k.is_empty()) {
        let (parent, name) = match k.rfind('/') {
            Some(i) => (&k[..i], &k[i + 1..]),
            None => ("", k.as_str()),
        };
        let (kind, mode, secs, tag) = m[k].clone();
        let kind = match kind {
            Kind::File { .. } => Kind::File { size: tag as u64 },
            other => other,
        };
        ids.insert(k, entries.len() as u32);
        entries.push(Entry {
            parent: ids[parent],
            name: name.into(),
            kind,
            mode,
            mtime: Timestamp { secs, nanos: 0 },
        });
    }
    Manifest {
        entries,
        opaque: vec![],
        partial: vec![],
    }
}

/// What the server's scan sees, folded as the scan folds it: entries
/// identical to the source's are one bit each.
fn view_of(replica: &Model, source: &Model) -> ReplicaView {
    build_view(replica, source, true, true)
}

/// `fold`: fold identical entries; `fold_files`: files too (the scan does
/// not under --checksum).
fn build_view(replica: &Model, source: &Model, fold: bool, fold_files: bool) -> ReplicaView {
    let man = manifest_of(source);
    let keys = keys_of(&man);
    let ids: HashMap<&str, usize> = keys.iter().enumerate().map(|(i, k)| (k, i)).collect();
    let mut view = ReplicaView::new(man.entries.len());
    for (k, e) in entries_of(replica, source) {
        match ids.get(k.as_str()) {
            Some(&i)
                if fold
                    && identical(&man.entries[i], &e)
                    && (fold_files || !matches!(e.kind, Kind::File { .. })) =>
            {
                view.mark_same(i as u32)
            }
            _ => view.insert(k, e),
        }
    }
    view
}

/// Entries whose parent is a directory on both sides.
fn entries_of(replica: &Model, source: &Model) -> HashMap<String, ReplicaEntry> {
    let is_dir = |m: &Model, k: &str| matches!(m.get(k), Some((Kind::Dir, ..)));
    replica
        .iter()
        .filter(|(k, _)| {
            k.is_empty() || {
                let parent = k.rfind('/').map(|i| &k[..i]).unwrap_or("");
                is_dir(replica, parent) && is_dir(source, parent) && {
                    // every ancestor must be a dir on both sides too
                    let mut cur = parent;
                    loop {
                        if !(is_dir(replica, cur) && is_dir(source, cur)) {
                            break false;
                        }
                        match cur.rfind('/') {
                            Some(i) => cur = &cur[..i],
                            None => {
                                break cur.is_empty() || (is_dir(replica, "") && is_dir(source, ""))
                            }
                        }
                    }
                }
            }
        })
        .map(|(k, (kind, mode, secs, tag))| {
            let kind = match kind {
                Kind::File { .. } => Kind::File { size: *tag as u64 },
                o => o.clone(),
            };
            (
                k.clone(),
                ReplicaEntry {
                    kind,
                    mode: *mode,
                    mtime: Timestamp {
                        secs: *secs,
                        nanos: 0,
                    },
                    version: crate::tree::Version::UNKNOWN,
                },
            )
        })
        .collect()
}

fn remove_subtree(m: &mut Model, key: &str) {
    let prefix = format!("{key}/");
    m.retain(|k, _| k != key && !k.starts_with(&prefix));
}

/// Carries a plan out on the model the way the server does.
fn apply(plan: &Plan, source: &Model, man: &Manifest, replica: &mut Model) {
    let keys = keys_of(man);
    let get = |id: u32| source[&keys[id as usize]].clone();
    for k in &plan.clear {
        remove_subtree(replica, k);
    }
    for &id in &plan.mkdirs {
        replica.insert(keys[id as usize].to_string(), get(id));
    }
    for &id in &plan.symlinks {
        replica.insert(keys[id as usize].to_string(), get(id));
    }
    for f in &plan.fetch {
        replica.insert(keys[f.id as usize].to_string(), get(f.id));
    }
    for &id in &plan.metadata {
        replica.insert(keys[id as usize].to_string(), get(id));
    }
    for k in &plan.remove {
        remove_subtree(replica, k);
    }
    for &id in &plan.dirs_deepest_first {
        replica.insert(keys[id as usize].to_string(), get(id));
    }
}

fn model() -> impl Strategy<Value = Model> {
    model_of(&["a", "b", "c", "a.b", "a-"])
}

fn model_of(names: &'static [&'static str]) -> impl Strategy<Value = Model> {
    let name = proptest::sample::select(names);
    let path = proptest::collection::vec(name, 1..4).prop_map(|v| v.join("/"));
    let kind = prop_oneof![
        Just(Kind::Dir),
        Just(Kind::File { size: 0 }),
        prop_oneof![Just("x"), Just("y")].prop_map(|t| Kind::Symlink { target: t.into() }),
    ];
    let item = (
        path,
        kind,
        prop_oneof![Just(None), Just(Some(0o644)), Just(Some(0o755))],
        0i64..3,
        0u8..3,
    );
    proptest::collection::vec(item, 0..25).prop_map(|items| {
        let mut m = Model::new();
        m.insert(String::new(), (Kind::Dir, Some(0o755), 0, 0));
        for (p, kind, mode, secs, tag) in items {
            // ancestors become dirs unless already present as dirs
            let parts: Vec<&str> = p.split('/').collect();
            let mut ok = true;
            for n in 1..parts.len() {
                let anc = parts[..n].join("/");
                match m.get(&anc) {
                    Some((Kind::Dir, ..)) => {}
                    Some(_) => {
                        ok = false;
                        break;
                    }
                    None => {
                        m.insert(anc, (Kind::Dir, Some(0o755), 1, 0));
                    }
                }
            }
            if ok && !m.contains_key(&p) {
                m.insert(p, (kind, mode, secs, tag));
            }
        }
        m
    })
}

proptest! {
    #[test]
    fn plan_applied_to_any_replica_yields_the_source(source in model(), mut replica in model(), checksum in any::<bool>()) {
        let man = manifest_of(&source);
        prop_assert!(man.validate().is_ok());
        let view = view_of(&replica, &source);
        let p = plan(&man, &keys_of(&man), &view, PlanOptions { checksum });
        apply(&p, &source, &man, &mut replica);
        // Symlink permission bits are not meaningful (always 0777 on Linux).
        let norm = |m: &Model| -> Model {
            m.iter().map(|(k, v)| {
                let mut v = v.clone();
                if matches!(v.0, Kind::Symlink { .. }) { v.1 = None; }
                if !matches!(v.0, Kind::File { .. }) { v.3 = 0; }
                (k.clone(), v)
            }).collect()
        };
        prop_assert_eq!(norm(&replica), norm(&source));
    }

    /// One entry's key, computed alone, is the one `keys_of` gives it.
    #[test]
    fn a_single_key_equals_the_listed_one(source in model()) {
        let man = manifest_of(&source);
        let keys = keys_of(&man);
        for (i, k) in keys.iter().enumerate() {
            prop_assert_eq!(&man.key(i), k);
        }
        prop_assert_eq!(man.key(keys.len()), "");
    }

    /// Folding identical entries into bits changes nothing in the plan.
    #[test]
    fn folded_and_whole_views_plan_alike(source in model(), replica in model(), checksum in any::<bool>()) {
        let man = manifest_of(&source);
        let keys = keys_of(&man);
        let opts = PlanOptions { checksum };
        let whole = plan(&man, &keys, &build_view(&replica, &source, false, false), opts);
        let folded = plan(&man, &keys, &build_view(&replica, &source, true, !checksum), opts);
        prop_assert_eq!(folded, whole);
    }

    #[test]
    fn plan_on_equal_trees_is_empty(source in model()) {
        let man = manifest_of(&source);
        let view = view_of(&source, &source);
        let p = plan(&man, &keys_of(&man), &view, PlanOptions::default());
        prop_assert!(p.clear.is_empty() && p.mkdirs.is_empty() && p.symlinks.is_empty());
        prop_assert!(p.fetch.is_empty() && p.metadata.is_empty() && p.remove.is_empty());
    }
}

proptest! {
    /// Names a replica cannot hold: everything else converges, and the
    /// replica keeps exactly what it had at and below those names.
    #[test]
    fn unholdable_names_are_skipped_and_left_alone(
        source in model_of(&["a", "C:", "b", "CON"]),
        mut replica in model_of(&["a", "C:", "b", "CON"]),
    ) {
        let man = manifest_of(&source);
        let keys = keys_of(&man);
        let skip = man.unholdable(crate::tree::NameRules::Windows);
        let before = replica.clone();
        let mut p = plan(&man, &keys, &view_of(&replica, &source), PlanOptions::default());
        p.skip(&skip, &keys);
        apply(&p, &source, &man, &mut replica);
        let refused: HashSet<String> = skip
            .refused
            .iter()
            .map(|&(id, _)| keys[id as usize].to_string())
            .collect();
        let odd = |k: &str| is_below_any(k, &refused);
        let norm = |m: &Model, keep: bool| -> Model {
            m.iter()
                .filter(|(k, _)| odd(k) == keep)
                .map(|(k, v)| {
                    let mut v = v.clone();
                    if matches!(v.0, Kind::Symlink { .. }) { v.1 = None; }
                    if !matches!(v.0, Kind::File { .. }) { v.3 = 0; }
                    (k.clone(), v)
                })
                .collect()
        };
        prop_assert_eq!(norm(&replica, false), norm(&source, false));
        prop_assert_eq!(norm(&replica, true), norm(&before, true));
    }
}

#[test]
fn file_where_dir_was_and_back() {
    let mut src = Model::new();
    src.insert(String::new(), (Kind::Dir, None, 0, 0));
    src.insert("x".into(), (Kind::File { size: 1 }, None, 0, 1));
    let mut rep = Model::new();
    rep.insert(String::new(), (Kind::Dir, None, 0, 0));
    rep.insert("x".into(), (Kind::Dir, None, 0, 0));
    rep.insert("x/y".into(), (Kind::File { size: 1 }, None, 0, 1));
    let man = manifest_of(&src);
    let p = plan(
        &man,
        &keys_of(&man),
        &view_of(&rep, &src),
        PlanOptions::default(),
    );
    assert_eq!(p.clear, vec!["x".to_string()]);
    assert_eq!(p.fetch.len(), 1);
    assert_eq!(p.fetch[0].reason, Reason::TypeChanged);
}

#[test]
fn doomed_prefixes() {
    let doomed: HashSet<String> = ["a/b".to_string()].into();
    assert!(is_below_any("a/b", &doomed));
    assert!(is_below_any("a/b/c", &doomed));
    assert!(!is_below_any("a/bc", &doomed));
    assert!(!is_below_any("a", &doomed));
}
