//! Interoperability with Consul's own tools on one dev agent (started once
//! for this binary): the `consul` CLI inside the agent's container reads
//! what kvmap wrote byte for byte and kvmap reads what the CLI (or another
//! HTTP client) wrote as normal entries; TTL metadata in `Flags`; external
//! writes in CAS conflicts and in a running watch; `key_prefix` isolation;
//! kvmap locks and `consul lock` on the same key exclude each other.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{anyhow, ensure, Context as _};
use bytes::Bytes;
use common::{b64, unix_ms, unix_ms_now, wait_for, Cli, Lazy, Watcher, WAIT};
use integration_tests::ConsulDev;
use kvmap_consul::{ConsulConfig, ConsulStore, DEFAULT_MAX_VALUE_BYTES, MAX_TXN_OPS};
use kvmap_core::{
    Batch, Context, DeleteOptions, ErrorKind, Key, KvStore, KvStoreExt, ListRequest, WatchRequest,
};

/// kvmap's tag in the top 16 bits of `Flags`.
const FLAGS_TAG: u64 = 0x6b76;
const LOW48: u64 = (1 << 48) - 1;

/// Keys that need care in a URL path or a file system; every one is a
/// valid kvmap key. `a/b` is there to catch aliasing with the dot/slash
/// keys.
const ODD_KEYS: &[&str] = &[
    "with space",
    "pct%41%",
    "q?x=1&y=2",
    "hash#frag",
    "plus+semi;colon",
    "back\\slash",
    "unicodé/ключ/🔑",
    "a/b",
    "a//b",
    "a/./b",
    "a/../b",
    "trail/",
];

/// Keys Consul's HTTP KV path (and so the CLI) cannot address: the agent
/// redirects a path with `//`, `/./` or `/../` to its cleaned form. kvmap
/// must still store them literally (through `/v1/txn`).
fn cli_addressable(key: &str) -> bool {
    !(key.contains("//") || key.contains("/./") || key.contains("/../"))
}

fn config(dev: &ConsulDev) -> ConsulConfig {
    ConsulConfig::new(dev.http_addr())
        .with_reaper_interval(Some(Duration::from_millis(200)))
        .with_watch_wait(Duration::from_secs(5))
        .with_request_timeout(Duration::from_secs(10))
}

struct Env {
    dev: Lazy<ConsulDev>,
    tag: String,
}

impl Env {
    /// The agent, a kvmap store on it, the CLI's `-http-addr` flag, and this
    /// trial's Consul key prefix.
    async fn setup(
        &self,
        trial: &str,
    ) -> anyhow::Result<(&ConsulDev, ConsulStore, String, String)> {
        let dev = self.dev.get().await?;
        let store = ConsulStore::connect(config(dev)).await?;
        let flag = Cli::addr_flag(&dev.http_addr());
        Ok((dev, store, flag, format!("interop/{}/{trial}/", self.tag)))
    }
}

fn value_for(key: &str) -> Vec<u8> {
    format!("value of {key}").into_bytes()
}

fn binary_values() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("bin/all-bytes", (0u8..=255).collect()),
        ("bin/invalid-utf8", vec![0xff, 0xfe, 0x00, 0x80, 0xc3, 0x28]),
        ("bin/empty", vec![]),
        ("bin/nul", vec![0, 0, 0]),
        (
            "bin/64k",
            (0..64 * 1024u32).map(|i| (i * 7 % 251) as u8).collect(),
        ),
    ]
}

/// kvmap writes; the CLI reads the same bytes under the same keys, and
/// kvmap's revisions are Consul's indexes.
async fn kvmap_to_cli(env: &Env) -> anyhow::Result<()> {
    let (dev, store, flag, p) = env.setup("k2c").await?;
    let cli = Cli::new(dev.node(), &flag);
    let ctx = Context::new();
    let mut want: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut revs: BTreeMap<String, u64> = BTreeMap::new();
    let mut writes: Vec<(String, Vec<u8>)> = ODD_KEYS
        .iter()
        .map(|k| ((*k).to_owned(), value_for(k)))
        .collect();
    writes.extend(binary_values().into_iter().map(|(k, v)| (k.to_owned(), v)));
    for (k, v) in &writes {
        let full = format!("{p}{k}");
        let rev = store
            .set(&ctx, &Key::new(&full)?, v.clone())
            .await
            .with_context(|| format!("kvmap put {full:?}"))?;
        want.insert(full.clone(), v.clone());
        revs.insert(full, rev);
    }
    // Everything, including the keys the CLI cannot address by path.
    let got = cli.export(&p).await?;
    let got_values: BTreeMap<String, Vec<u8>> = got
        .iter()
        .map(|(k, (v, _))| (k.clone(), v.clone()))
        .collect();
    ensure!(
        got_values.keys().collect::<Vec<_>>() == want.keys().collect::<Vec<_>>(),
        "consul kv export lists other keys than kvmap wrote:\n got  {:?}\n want {:?}",
        got_values.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, v) in &want {
        ensure!(
            got_values.get(k) == Some(v),
            "consul kv export: value of {k:?} differs: got {:?}, want {:?}",
            got_values
                .get(k)
                .map(|v| String::from_utf8_lossy(v).into_owned()),
            String::from_utf8_lossy(v)
        );
    }
    // Key by key through the CLI's path API, with the indexes.
    for (k, v) in &want {
        if !cli_addressable(k) {
            continue;
        }
        let got = cli.get_bytes(k).await?;
        ensure!(
            got.as_ref() == Some(v),
            "consul kv get {k:?}: got {:?}, want {:?}",
            got.map(|v| String::from_utf8_lossy(&v).into_owned()),
            String::from_utf8_lossy(v)
        );
        let d = cli
            .detailed(k)
            .await?
            .ok_or_else(|| anyhow!("{k:?} missing"))?;
        let e = store
            .get(&ctx, &Key::new(k)?)
            .await?
            .ok_or_else(|| anyhow!("kvmap lost {k:?}"))?;
        ensure!(
            d.modify_index == revs[k] && e.revision == d.modify_index,
            "{k:?}: ModifyIndex {} vs put revision {} vs get revision {}",
            d.modify_index,
            revs[k],
            e.revision
        );
        ensure!(
            e.create_revision == d.create_index,
            "{k:?}: create_revision {} vs CreateIndex {}",
            e.create_revision,
            d.create_index
        );
    }
    // The dot/slash keys did not alias "a/b".
    let ab = store
        .get(&ctx, &Key::new(format!("{p}a/b"))?)
        .await?
        .ok_or_else(|| anyhow!("a/b missing"))?;
    ensure!(
        ab.value == value_for("a/b"),
        "a/b was overwritten by an alias: {:?}",
        String::from_utf8_lossy(&ab.value)
    );
    Ok(())
}

/// `Value` as a foreign HTTP client writes it through `/v1/txn`, for keys
/// the CLI cannot address.
async fn txn_set(base: &str, key: &str, value: &[u8]) -> anyhow::Result<()> {
    let body = serde_json::json!([{ "KV": { "Verb": "set", "Key": key, "Value": b64(value) } }]);
    let resp = integration_tests::consul::http_client()
        .put(format!("{base}/v1/txn"))
        .json(&body)
        .send()
        .await?;
    let status = resp.status();
    let text = resp.text().await?;
    ensure!(status.is_success(), "txn set {key:?}: {status} {text}");
    Ok(())
}

/// The CLI (and a plain HTTP client) writes; kvmap reads normal entries:
/// exact bytes, revision = ModifyIndex, create revision = CreateIndex, no
/// expiry, in list (byte order) and get_many.
async fn cli_to_kvmap(env: &Env) -> anyhow::Result<()> {
    let (dev, store, flag, p) = env.setup("c2k").await?;
    let cli = Cli::new(dev.node(), &flag);
    let ctx = Context::new();
    let mut want: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut writes: Vec<(String, Vec<u8>)> = ODD_KEYS
        .iter()
        .map(|k| ((*k).to_owned(), value_for(k)))
        .collect();
    writes.extend(
        binary_values()
            .into_iter()
            .filter(|(k, _)| *k != "bin/64k") // one CLI argument is at most 128 KiB
            .map(|(k, v)| (k.to_owned(), v)),
    );
    for (k, v) in &writes {
        let full = format!("{p}{k}");
        if cli_addressable(&full) {
            cli.put_bytes(&full, v).await?;
        } else {
            txn_set(&dev.http_addr(), &full, v).await?;
        }
        want.insert(full, v.clone());
    }
    for (k, v) in &want {
        let e = store
            .get(&ctx, &Key::new(k)?)
            .await?
            .ok_or_else(|| anyhow!("kvmap does not see {k:?} written by the cli"))?;
        ensure!(
            e.value.as_ref() == v.as_slice(),
            "{k:?}: kvmap read {:?}, cli wrote {:?}",
            String::from_utf8_lossy(&e.value),
            String::from_utf8_lossy(v)
        );
        ensure!(e.expires_at.is_none(), "{k:?}: a foreign key got an expiry");
        if cli_addressable(k) {
            let d = cli
                .detailed(k)
                .await?
                .ok_or_else(|| anyhow!("{k:?} missing"))?;
            ensure!(
                e.revision == d.modify_index && e.create_revision == d.create_index,
                "{k:?}: kvmap revisions ({}, created {}) vs consul (ModifyIndex {}, CreateIndex {})",
                e.revision,
                e.create_revision,
                d.modify_index,
                d.create_index
            );
        }
    }
    // list: every key once, in byte order, exact values.
    let listed = store
        .list_all(&ctx, ListRequest::prefix(p.clone()), usize::MAX)
        .await?;
    let keys: Vec<&str> = listed.iter().map(|e| e.key.as_str()).collect();
    let want_keys: Vec<&str> = want.keys().map(String::as_str).collect();
    ensure!(
        keys == want_keys,
        "list order/contents:\n got  {keys:?}\n want {want_keys:?}"
    );
    for e in &listed {
        ensure!(
            e.value.as_ref() == want[e.key.as_str()].as_slice(),
            "list value of {:?}",
            e.key
        );
    }
    // A page at a time gives the same.
    let mut paged = Vec::new();
    let mut req = ListRequest::prefix(p.clone()).with_limit(5);
    loop {
        let page = store.list(&ctx, &req).await?;
        ensure!(page.entries.len() <= 5, "page over its limit");
        paged.extend(page.entries.into_iter().map(|e| e.key.as_str().to_owned()));
        match page.cursor {
            Some(c) => req = req.with_cursor(Some(c)),
            None => break,
        }
    }
    ensure!(paged == want_keys, "paged list: {paged:?} vs {want_keys:?}");
    let keys: Vec<Key> = want.keys().map(Key::new).collect::<Result<_, _>>()?;
    let many = store.get_many(&ctx, &keys).await?;
    for (k, r) in keys.iter().zip(many) {
        let e = r?.ok_or_else(|| anyhow!("get_many lost {k:?}"))?;
        ensure!(
            e.value.as_ref() == want[k.as_str()].as_slice(),
            "get_many {k:?}"
        );
    }
    // A CLI update keeps CreateIndex and moves ModifyIndex; kvmap agrees.
    let k = format!("{p}with space");
    let before = cli.detailed(&k).await?.ok_or_else(|| anyhow!("missing"))?;
    cli.put_bytes(&k, b"updated by the cli").await?;
    let after = cli.detailed(&k).await?.ok_or_else(|| anyhow!("missing"))?;
    let e = store
        .get(&ctx, &Key::new(&k)?)
        .await?
        .ok_or_else(|| anyhow!("missing after update"))?;
    ensure!(
        e.value == "updated by the cli"
            && e.revision == after.modify_index
            && after.modify_index > before.modify_index
            && e.create_revision == before.create_index,
        "after a cli update: {e:?} vs {before:?} -> {after:?}"
    );
    // kvmap deletes what the CLI wrote.
    ensure!(
        store.remove(&ctx, &Key::new(&k)?).await?,
        "delete said absent"
    );
    ensure!(cli.get_bytes(&k).await?.is_none(), "cli still sees {k:?}");
    Ok(())
}

/// Flags written by another tool mean nothing to kvmap: no expiry, read
/// normally, never reaped.
async fn foreign_flags(env: &Env) -> anyhow::Result<()> {
    let (dev, store, flag, p) = env.setup("flags").await?;
    let cli = Cli::new(dev.node(), &flag);
    let ctx = Context::new();
    let foreign: [(&str, u64); 4] = [
        ("f42", 42),
        ("fmax", u64::MAX),
        ("fneighbour", ((FLAGS_TAG - 1) << 48) | 5),
        ("flow48", LOW48),
    ];
    let mut idx = BTreeMap::new();
    for (k, f) in foreign {
        let full = format!("{p}{k}");
        cli.put_flags(&full, &format!("v-{k}"), f).await?;
        let d = cli
            .detailed(&full)
            .await?
            .ok_or_else(|| anyhow!("missing"))?;
        ensure!(d.flags == f, "cli wrote flags {f}, reads {}", d.flags);
        idx.insert(full.clone(), d.modify_index);
        let e = store
            .get(&ctx, &Key::new(&full)?)
            .await?
            .ok_or_else(|| anyhow!("kvmap does not see {full:?} with flags {f}"))?;
        ensure!(
            e.value == format!("v-{k}") && e.expires_at.is_none() && e.revision == d.modify_index,
            "{full:?} with flags {f:#x}: {e:?}"
        );
    }
    let listed = store
        .list_all(&ctx, ListRequest::prefix(p.clone()), usize::MAX)
        .await?;
    ensure!(
        listed.len() == foreign.len() && listed.iter().all(|e| e.expires_at.is_none()),
        "list of foreign-flag keys: {listed:?}"
    );
    // Let the reaper run: a kvmap TTL entry next to them is reaped on the
    // server; the foreign ones are untouched afterwards.
    let probe = format!("{p}ttl-probe");
    store
        .set_with_ttl(&ctx, &Key::new(&probe)?, "x", Duration::from_millis(300))
        .await?;
    wait_for("the reaper to delete the ttl probe", WAIT, || async {
        Ok(cli.detailed(&probe).await?.is_none().then_some(()))
    })
    .await?;
    for (k, f) in foreign {
        let full = format!("{p}{k}");
        let d = cli
            .detailed(&full)
            .await?
            .ok_or_else(|| anyhow!("the reaper deleted {full:?} (foreign flags {f:#x})"))?;
        ensure!(
            d.modify_index == idx[&full] && d.flags == f,
            "{full:?} was rewritten by kvmap: {d:?}"
        );
    }
    Ok(())
}

/// A kvmap TTL entry: the CLI sees the value and kvmap's tagged expiry in
/// `Flags`; kvmap hides it once the instant passes; the reaper deletes it.
async fn ttl_flags_and_reaping(env: &Env) -> anyhow::Result<()> {
    let (dev, store, flag, p) = env.setup("ttl").await?;
    let cli = Cli::new(dev.node(), &flag);
    let ctx = Context::new();
    let ttl = Duration::from_secs(5);
    let full = format!("{p}session");
    let k = Key::new(&full)?;
    let before = unix_ms_now();
    let rev = store.set_with_ttl(&ctx, &k, "tv", ttl).await?;
    let after = unix_ms_now();
    let ttl_ms = u64::try_from(ttl.as_millis())?;
    let d = cli
        .detailed(&full)
        .await?
        .ok_or_else(|| anyhow!("the cli does not see a ttl entry right after it was written"))?;
    ensure!(
        d.modify_index == rev,
        "ModifyIndex {} vs revision {rev}",
        d.modify_index
    );
    ensure!(
        d.flags >> 48 == FLAGS_TAG,
        "Flags {:#x} do not carry kvmap's tag {FLAGS_TAG:#x} in the top 16 bits",
        d.flags
    );
    let exp = d.flags & LOW48;
    ensure!(
        exp + 1 >= before + ttl_ms && exp <= after + ttl_ms + 1000,
        "expiry {exp} ms outside [{}, {}] (written between {before} and {after} with ttl {ttl_ms} ms)",
        before + ttl_ms,
        after + ttl_ms
    );
    ensure!(
        cli.get_bytes(&full).await?.as_deref() == Some(b"tv".as_slice()),
        "the cli reads another value"
    );
    let e = store
        .get(&ctx, &k)
        .await?
        .ok_or_else(|| anyhow!("missing"))?;
    let at = e
        .expires_at
        .ok_or_else(|| anyhow!("kvmap entry without expiry: {e:?}"))?;
    ensure!(
        unix_ms(at).abs_diff(exp) <= 1,
        "expires_at {} ms vs Flags expiry {exp} ms",
        unix_ms(at)
    );
    ensure!(at > UNIX_EPOCH, "expiry at the epoch");
    // Invisible at once: a read that starts after the instant sees nothing,
    // and nothing vanishes before it.
    wait_for("kvmap to hide the expired entry", WAIT, || async {
        let started = unix_ms_now();
        let got = store.get(&ctx, &k).await?;
        let ended = unix_ms_now();
        match got {
            Some(e) => {
                ensure!(
                    started <= exp + 1,
                    "a read started {} ms after the expiry still sees {e:?}",
                    started - exp
                );
                Ok(None)
            }
            None => {
                ensure!(
                    ended + 1 >= exp,
                    "the entry vanished {} ms before its expiry",
                    exp - ended
                );
                Ok(Some(()))
            }
        }
    })
    .await?;
    let listed = store
        .list_all(&ctx, ListRequest::prefix(p.clone()), usize::MAX)
        .await?;
    ensure!(listed.is_empty(), "expired entry listed: {listed:?}");
    wait_for(
        "the reaper to delete the expired entry on the server",
        WAIT,
        || async { Ok(cli.detailed(&full).await?.is_none().then_some(())) },
    )
    .await?;
    Ok(())
}

/// External writes are seen by kvmap's conditions, with Consul's indexes.
async fn cas_with_external_writes(env: &Env) -> anyhow::Result<()> {
    let (dev, store, flag, p) = env.setup("cas").await?;
    let cli = Cli::new(dev.node(), &flag);
    let ctx = Context::new();
    let full = format!("{p}lock");
    let k = Key::new(&full)?;
    let r1 = store.set(&ctx, &k, "mine").await?;
    cli.put_bytes(&full, b"theirs").await?;
    let r2 = cli
        .detailed(&full)
        .await?
        .ok_or_else(|| anyhow!("missing"))?
        .modify_index;
    ensure!(r2 > r1, "ModifyIndex {r2} after {r1}");
    let e = store
        .update(&ctx, &k, "lost update", r1)
        .await
        .err()
        .ok_or_else(|| anyhow!("update on a stale revision succeeded"))?;
    ensure!(
        e.kind() == ErrorKind::Conflict { current: Some(r2) },
        "update on revision {r1} after an external put: {:?} ({e}), want Conflict {{ current: Some({r2}) }}",
        e.kind()
    );
    let e = store
        .delete(&ctx, &k, DeleteOptions::if_revision(r1))
        .await
        .err()
        .ok_or_else(|| anyhow!("delete on a stale revision succeeded"))?;
    ensure!(
        e.kind() == ErrorKind::Conflict { current: Some(r2) },
        "delete on a stale revision: {:?} ({e})",
        e.kind()
    );
    let e = store
        .create(&ctx, &k, "x")
        .await
        .err()
        .ok_or_else(|| anyhow!("create over an existing key succeeded"))?;
    ensure!(
        e.kind() == ErrorKind::AlreadyExists,
        "create: {:?}",
        e.kind()
    );
    ensure!(
        cli.get_bytes(&full).await?.as_deref() == Some(b"theirs".as_slice()),
        "a failed condition wrote something"
    );
    // kvmap's revision is a valid `-cas -modify-index` for the CLI and back.
    let r3 = store.update(&ctx, &k, "mine again", r2).await?;
    let idx = format!("-modify-index={r3}");
    cli.kv_ok("put", &["-cas", &idx, &full, "cli cas"]).await?;
    let r4 = cli
        .detailed(&full)
        .await?
        .ok_or_else(|| anyhow!("missing"))?
        .modify_index;
    let (code, _, _) = cli
        .kv("put", &["-cas", &idx, &full, "stale cli cas"])
        .await?;
    ensure!(code != 0, "the cli's cas on a stale index succeeded");
    let e = store
        .get(&ctx, &k)
        .await?
        .ok_or_else(|| anyhow!("missing"))?;
    ensure!(
        e.value == "cli cas" && e.revision == r4,
        "{e:?} vs index {r4}"
    );
    // An external delete: the condition now finds no key.
    cli.delete(&full).await?;
    let e = store
        .update(&ctx, &k, "x", r4)
        .await
        .err()
        .ok_or_else(|| anyhow!("update of a deleted key succeeded"))?;
    ensure!(
        e.kind() == ErrorKind::Conflict { current: None },
        "update after an external delete: {:?}",
        e.kind()
    );
    ensure!(
        cli.get_bytes(&full).await?.is_none(),
        "the failed update wrote"
    );
    Ok(())
}

/// A running kvmap watch sees the CLI's writes and deletes.
async fn watch_sees_cli(env: &Env) -> anyhow::Result<()> {
    let (dev, store, flag, p) = env.setup("watch").await?;
    let cli = Cli::new(dev.node(), &flag);
    let ctx = Context::new();
    let wp = format!("{p}w/");
    let stream = store.watch(&ctx, WatchRequest::prefix(wp.clone())).await?;
    let w = Watcher::spawn(stream);
    let x = format!("{wp}x");
    let bin = format!("{wp}bin");
    cli.put_bytes(&x, b"1").await?;
    let x_index = cli
        .detailed(&x)
        .await?
        .ok_or_else(|| anyhow!("missing"))?
        .modify_index;
    w.wait_state("cli put", &common::state([(x.as_str(), "1")]), WAIT)
        .await?;
    // Outside the prefix (a string prefix of it, but not below `w/`).
    cli.put_bytes(&format!("{p}wx"), b"outside").await?;
    cli.put_bytes(&bin, &[0xff, 0x00, 0xfe]).await?;
    let mut want = common::state([(x.as_str(), "1")]);
    want.insert(bin.clone(), Bytes::from_static(&[0xff, 0x00, 0xfe]));
    w.wait_state("cli binary put", &want, WAIT).await?;
    cli.delete(&x).await?;
    want.remove(&x);
    w.wait_state("cli delete", &want, WAIT).await?;
    cli.kv_ok("delete", &["-recurse", &wp]).await?;
    let v = w
        .wait_state("cli recursive delete", &BTreeMap::new(), WAIT)
        .await?;
    eprintln!(
        "watch of cli writes: {} puts, {} deletes, {} resyncs, errors {:?}",
        v.puts, v.deletes, v.resyncs, v.errors
    );
    ensure!(
        v.ever.iter().all(|(k, _)| k.starts_with(&wp)),
        "the watch showed a key outside its prefix: {:?}",
        v.ever
    );
    if v.resyncs == 0 {
        ensure!(
            v.puts >= 2 && v.deletes >= 2,
            "without a resync every change must be an event: {v:?}"
        );
        ensure!(
            v.revisions
                .get(&x)
                .is_some_and(|r| r.first() == Some(&x_index)),
            "put event of {x:?} carries revisions {:?}, ModifyIndex was {x_index}",
            v.revisions.get(&x)
        );
    }
    Ok(())
}

/// `key_prefix` maps kvmap keys to Consul keys below it and hides
/// everything else.
async fn key_prefix_isolation(env: &Env) -> anyhow::Result<()> {
    let (dev, _, flag, p) = env.setup("prefix").await?;
    let cli = Cli::new(dev.node(), &flag);
    let ctx = Context::new();
    let (pa, pb) = (format!("{p}apps/a/"), format!("{p}apps/b/"));
    let a = ConsulStore::connect(config(dev).with_key_prefix(pa.clone())).await?;
    let b = ConsulStore::connect(config(dev).with_key_prefix(pb.clone())).await?;
    let k = Key::new("k")?;
    a.set(&ctx, &k, "va").await?;
    b.set(&ctx, &k, "vb").await?;
    a.set(&ctx, &Key::new("dir/x")?, "ax").await?;
    for (ck, v) in [
        (format!("{pa}k"), "va"),
        (format!("{pb}k"), "vb"),
        (format!("{pa}dir/x"), "ax"),
    ] {
        ensure!(
            cli.get_bytes(&ck).await?.as_deref() == Some(v.as_bytes()),
            "consul key {ck:?} does not hold {v:?}"
        );
    }
    cli.put_bytes(&format!("{pa}ext"), b"e").await?;
    cli.put_bytes(&format!("{p}apps/ab/k"), b"sibling").await?;
    cli.put_bytes(&format!("{p}apps/k"), b"parent").await?;
    let ext = a
        .get(&ctx, &Key::new("ext")?)
        .await?
        .ok_or_else(|| anyhow!("a does not see ext written by the cli"))?;
    ensure!(
        ext.key.as_str() == "ext" && ext.value == "e",
        "entry of a prefixed store: {ext:?}"
    );
    ensure!(
        b.get(&ctx, &Key::new("ext")?).await?.is_none(),
        "b sees a's key"
    );
    let ka: Vec<String> = a
        .list_all(&ctx, ListRequest::prefix(""), usize::MAX)
        .await?
        .into_iter()
        .map(|e| e.key.as_str().to_owned())
        .collect();
    ensure!(ka == ["dir/x", "ext", "k"], "a lists {ka:?}");
    let kb: Vec<String> = b
        .list_all(&ctx, ListRequest::prefix(""), usize::MAX)
        .await?
        .into_iter()
        .map(|e| e.key.as_str().to_owned())
        .collect();
    ensure!(kb == ["k"], "b lists {kb:?}");
    // A watch of everything in a sees only a.
    let w = Watcher::spawn(a.watch(&ctx, WatchRequest::prefix("")).await?);
    cli.put_bytes(&format!("{pb}z"), b"from-b").await?;
    cli.put_bytes(&format!("{p}apps/ab/z"), b"from-sibling")
        .await?;
    cli.put_bytes(&format!("{pa}z"), b"from-a").await?;
    wait_for("a's watch to see z", WAIT, || async {
        Ok(
            (w.view().state.get("z").map(|v| v.as_ref()) == Some(b"from-a".as_slice()))
                .then_some(()),
        )
    })
    .await?;
    let v = w.view();
    ensure!(
        v.ever.iter().all(|(k, val)| !k.starts_with("interop/")
            && (val == "from-a" || !val.starts_with(b"from-"))),
        "a's watch showed foreign keys: {:?}",
        v.ever
    );
    // Batches and deletes stay inside the prefix too.
    a.apply(
        &ctx,
        Batch::new()
            .put(Key::new("t1")?, "1")
            .delete(Key::new("k")?),
    )
    .await?
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    ensure!(
        cli.get_bytes(&format!("{pa}t1")).await?.as_deref() == Some(b"1".as_slice()),
        "batch put not under the prefix"
    );
    ensure!(
        cli.get_bytes(&format!("{pa}k")).await?.is_none(),
        "a's k not deleted"
    );
    ensure!(
        cli.get_bytes(&format!("{pb}k")).await?.as_deref() == Some(b"vb".as_slice()),
        "a's delete touched b"
    );
    ensure!(
        cli.get_bytes(&format!("{p}apps/k")).await?.as_deref() == Some(b"parent".as_slice()),
        "the parent key changed"
    );
    Ok(())
}

/// Consul's limits as kvmap declares them: 64 ops in one atomic txn (one
/// ModifyIndex for all, as any client sees), 65 refused before sending;
/// the largest value round-trips through the CLI, one byte more is refused.
async fn limits(env: &Env) -> anyhow::Result<()> {
    let (dev, store, flag, p) = env.setup("limits").await?;
    let cli = Cli::new(dev.node(), &flag);
    let ctx = Context::new();
    let batch = (0..MAX_TXN_OPS).try_fold(Batch::new(), |b, i| {
        Ok::<_, kvmap_core::Error>(b.put(Key::new(format!("{p}b64/{i:02}"))?, format!("v{i}")))
    })?;
    let out = store.apply(&ctx, batch).await?;
    let revs: Vec<u64> = out
        .into_iter()
        .map(|r| match r? {
            kvmap_core::BatchOutcome::Put(rev) => Ok(rev),
            other => Err(anyhow!("a put outcome {other:?}")),
        })
        .collect::<anyhow::Result<_>>()?;
    // What another client sees: 64 keys written at one index.
    let resp = integration_tests::consul::http_client()
        .get(format!("{}/v1/kv/{p}b64/?recurse", dev.http_addr()))
        .send()
        .await?;
    let kvs: Vec<serde_json::Value> = resp.json().await?;
    let indexes: std::collections::BTreeSet<u64> = kvs
        .iter()
        .filter_map(|kv| kv["ModifyIndex"].as_u64())
        .collect();
    ensure!(
        kvs.len() == MAX_TXN_OPS && indexes.len() == 1,
        "a {MAX_TXN_OPS}-op batch: {} keys at indexes {indexes:?}",
        kvs.len()
    );
    ensure!(
        revs.iter().all(|r| indexes.contains(r)),
        "batch revisions {revs:?} vs ModifyIndex {indexes:?}"
    );
    let batch = (0..=MAX_TXN_OPS).try_fold(Batch::new(), |b, i| {
        Ok::<_, kvmap_core::Error>(b.put(Key::new(format!("{p}b65/{i:02}"))?, "x"))
    })?;
    let e = store
        .apply(&ctx, batch)
        .await
        .err()
        .ok_or_else(|| anyhow!("a {}-op batch was accepted", MAX_TXN_OPS + 1))?;
    ensure!(
        e.kind() == ErrorKind::InvalidArgument,
        "a {}-op batch: {e} ({e:?})",
        MAX_TXN_OPS + 1
    );
    ensure!(
        cli.export(&format!("{p}b65/")).await?.is_empty(),
        "a refused batch wrote something"
    );
    // The largest value, byte-exact through the CLI; one more byte refused.
    let big: Vec<u8> = (0..DEFAULT_MAX_VALUE_BYTES)
        .map(|i| (i % 253) as u8)
        .collect();
    let k = format!("{p}big");
    store.set(&ctx, &Key::new(&k)?, big.clone()).await?;
    let got = cli.export(&k).await?;
    ensure!(
        got.get(&k).is_some_and(|(v, _)| v == &big),
        "the cli does not read the {DEFAULT_MAX_VALUE_BYTES}-byte value back exactly"
    );
    let too_big = vec![b'x'; DEFAULT_MAX_VALUE_BYTES + 1];
    let k2 = format!("{p}too-big");
    let e = store
        .set(&ctx, &Key::new(&k2)?, too_big)
        .await
        .err()
        .ok_or_else(|| anyhow!("a value over the limit was accepted"))?;
    ensure!(
        e.kind()
            == ErrorKind::ValueTooLarge {
                size: DEFAULT_MAX_VALUE_BYTES + 1,
                max: DEFAULT_MAX_VALUE_BYTES
            },
        "value over the limit: {e} ({e:?})"
    );
    ensure!(
        cli.get_bytes(&k2).await?.is_none(),
        "the refused value was written"
    );
    Ok(())
}

/// A TTL entry rewritten by the CLI (Flags 0) is a plain entry from then
/// on: never hidden, never reaped (the reaper's delete is a CAS on the
/// ModifyIndex it saw). With the reaper off, an expired entry stays on the
/// server but kvmap hides it from every read and lets `create` take the
/// key.
async fn ttl_vs_external_rewrite(env: &Env) -> anyhow::Result<()> {
    let (dev, store, flag, p) = env.setup("ttl-rewrite").await?;
    let cli = Cli::new(dev.node(), &flag);
    let ctx = Context::new();
    let k = format!("{p}rewritten");
    let key = Key::new(&k)?;
    store
        .set_with_ttl(&ctx, &key, "kvmap", Duration::from_secs(1))
        .await?;
    cli.put_bytes(&k, b"cli").await?;
    // Past the expiry, and past a reaper pass (a probe next to it is gone).
    let probe = format!("{p}probe");
    store
        .set_with_ttl(&ctx, &Key::new(&probe)?, "x", Duration::from_millis(1500))
        .await?;
    wait_for("the reaper to delete the probe", WAIT, || async {
        Ok(cli.detailed(&probe).await?.is_none().then_some(()))
    })
    .await?;
    ensure!(
        cli.get_bytes(&k).await?.as_deref() == Some(b"cli".as_slice()),
        "the reaper deleted a key the cli rewrote after kvmap's ttl write"
    );
    let e = store
        .get(&ctx, &key)
        .await?
        .ok_or_else(|| anyhow!("kvmap hides a key the cli rewrote without flags"))?;
    ensure!(
        e.value == "cli" && e.expires_at.is_none(),
        "after the cli rewrite: {e:?}"
    );

    // Reaper off: expired entries stay on the server, hidden by kvmap.
    let lazy = ConsulStore::connect(config(dev).with_reaper_interval(None)).await?;
    let k2 = format!("{p}expired");
    let key2 = Key::new(&k2)?;
    lazy.set_with_ttl(&ctx, &key2, "old", Duration::from_millis(300))
        .await?;
    wait_for("kvmap to hide the expired entry", WAIT, || async {
        Ok(lazy.get(&ctx, &key2).await?.is_none().then_some(()))
    })
    .await?;
    ensure!(
        cli.get_bytes(&k2).await?.as_deref() == Some(b"old".as_slice()),
        "without a reaper the expired entry should still be on the server"
    );
    let listed = lazy
        .list_all(&ctx, ListRequest::prefix(format!("{p}exp")), usize::MAX)
        .await?;
    ensure!(listed.is_empty(), "an expired entry is listed: {listed:?}");
    let many = lazy.get_many(&ctx, std::slice::from_ref(&key2)).await?;
    ensure!(
        matches!(many.as_slice(), [Ok(None)]),
        "get_many of an expired entry: {many:?}"
    );
    let rev = lazy
        .create(&ctx, &key2, "new")
        .await
        .context("create over an expired entry")?;
    let d = cli
        .detailed(&k2)
        .await?
        .ok_or_else(|| anyhow!("the create wrote nothing"))?;
    ensure!(
        d.modify_index == rev && (d.flags >> 48 != FLAGS_TAG || d.flags & LOW48 == 0),
        "after create over the expired entry: {d:?}, revision {rev}"
    );
    ensure!(
        cli.get_bytes(&k2).await?.as_deref() == Some(b"new".as_slice()),
        "the cli does not read the created value"
    );
    Ok(())
}

/// A key watch sees every one of many sequential puts: after each
/// acknowledged put, its event (or a resync holding it) arrives. Every
/// event is kept, so a miss shows what came instead. The first put
/// rewrites the value the key already holds: still a write with a new
/// revision, so still an event.
async fn key_watch_every_put(env: &Env) -> anyhow::Result<()> {
    use futures::StreamExt;
    let (_, store, _, p) = env.setup("keywatch").await?;
    let ctx = Context::new();
    let key = Key::new(format!("{p}w"))?;
    store.set(&ctx, &key, "0").await?;
    let mut s = store.watch(&ctx, WatchRequest::key(key.clone())).await?;
    let mut seen: Vec<String> = Vec::new();
    let mut last_rev = store
        .get(&ctx, &key)
        .await?
        .ok_or_else(|| anyhow!("missing"))?
        .revision;
    let mut unchanged = 0;
    for i in 0..=200u32 {
        let rev = store.set(&ctx, &key, i.to_string()).await?;
        if rev == last_rev {
            // Consul 1.8 skips a write of the value (and flags) a key
            // already holds: no new ModifyIndex, so no change to watch.
            ensure!(i == 0, "put {i} of a new value kept revision {rev}");
            unchanged += 1;
            continue;
        }
        ensure!(rev > last_rev, "put {i}: revision {rev} after {last_rev}");
        last_rev = rev;
        loop {
            let ev = match tokio::time::timeout(Duration::from_secs(20), s.next()).await {
                Ok(Some(Ok(ev))) => ev,
                other => anyhow::bail!(
                    "put {i} (revision {rev}): no event within 20s ({other:?}); last events: {:?}",
                    &seen[seen.len().saturating_sub(8)..]
                ),
            };
            seen.push(format!("{ev:?}").chars().take(200).collect());
            let done = match &ev {
                kvmap_core::WatchEvent::Put { entry, .. } => entry.revision >= rev,
                kvmap_core::WatchEvent::Resync { entries, .. } => {
                    entries.iter().any(|e| e.revision >= rev)
                }
                _ => false,
            };
            if done {
                break;
            }
        }
    }
    eprintln!("key watch: 201 puts, {unchanged} rewrote the value already stored (no new revision, no event)");
    Ok(())
}

fn words(w: &[&str]) -> Vec<String> {
    w.iter().map(|s| (*s).to_owned()).collect()
}

/// Raw JSON of `GET /v1/{path}` on the agent (`None` on 404).
async fn raw_get(base: &str, path: &str) -> anyhow::Result<Option<serde_json::Value>> {
    let resp = reqwest::get(format!("{base}/v1/{path}")).await?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    ensure!(resp.status().is_success(), "GET {path}: {}", resp.status());
    Ok(Some(resp.json().await?))
}

/// The lock key's entry as Consul has it (`Session`, `Flags`), if present.
async fn lock_entry(base: &str, consul_key: &str) -> anyhow::Result<Option<serde_json::Value>> {
    Ok(raw_get(base, &format!("kv/{consul_key}"))
        .await?
        .and_then(|v| v.as_array().and_then(|a| a.first().cloned())))
}

/// kvmap sessions ("kvmap lock") the agent knows.
async fn kvmap_sessions(base: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let all = raw_get(base, "session/list").await?.unwrap_or_default();
    Ok(all
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|s| s["Name"] == kvmap_consul::SESSION_NAME)
                .cloned()
                .collect()
        })
        .unwrap_or_default())
}

/// A kvmap lock on key `K` (store prefix `P`) is `consul lock P+K`'s lock:
/// each excludes the other, in both directions; the lock key is invisible
/// to kvmap's data operations; a foreign value at the lock key is never
/// overwritten; no session is left behind.
async fn locks_exclude_consul_lock(env: &Env) -> anyhow::Result<()> {
    let (dev, _, flag, p) = env.setup("lock").await?;
    let base = dev.http_addr();
    let store = ConsulStore::connect(config(dev).with_key_prefix(p.clone())).await?;
    let ctx = Context::new();
    let ttl = Duration::from_secs(10);
    let k = Key::new("jobs/migrate")?;
    let consul_prefix = format!("{p}jobs/migrate");
    let lock_key = format!("{consul_prefix}/.lock");
    let consul_lock = |timeout: &'static str, child: Vec<String>| {
        let node = dev.node();
        let (flag, prefix) = (flag.clone(), consul_prefix.clone());
        async move {
            // The image has no shell: children run directly, and are the
            // consul binary itself.
            let mut cmd = vec![
                "consul",
                "lock",
                "-shell=false",
                flag.as_str(),
                timeout,
                prefix.as_str(),
            ];
            cmd.extend(child.iter().map(String::as_str));
            node.exec(&cmd).await
        }
    };

    // 1. kvmap holds it: `consul lock` cannot get it.
    store
        .put(&ctx, &k, Bytes::from("data"), Default::default())
        .await?;
    let g = store
        .lock(&ctx, &k, kvmap_core::LockOptions::try_lock(ttl))
        .await?;
    let entry = lock_entry(&base, &lock_key)
        .await?
        .ok_or_else(|| anyhow!("no lock key {lock_key} while kvmap holds the lock"))?;
    ensure!(
        entry["Flags"].as_u64() == Some(kvmap_consul::LOCK_FLAGS),
        "lock key flags: {entry}"
    );
    ensure!(
        entry["ModifyIndex"].as_u64() == Some(g.token().get()),
        "token {} is not the lock key's ModifyIndex: {entry}",
        g.token()
    );
    let session = entry["Session"].as_str().unwrap_or_default().to_owned();
    let info = raw_get(&base, &format!("session/info/{session}"))
        .await?
        .and_then(|v| v.as_array().and_then(|a| a.first().cloned()))
        .ok_or_else(|| anyhow!("no session {session}"))?;
    eprintln!("kvmap lock session: {info}");
    ensure!(info["Behavior"] == "delete", "behavior: {info}");
    ensure!(info["LockDelay"].as_u64() == Some(0), "lock delay: {info}");
    ensure!(info["TTL"] == "10s", "ttl: {info}");
    let checks = info["Checks"].as_array().map_or(0, Vec::len)
        + info["NodeChecks"].as_array().map_or(0, Vec::len);
    ensure!(checks == 0, "the session has health checks: {info}");
    // Invisible to data operations.
    let page = store.list(&ctx, &ListRequest::prefix("")).await?;
    let keys: Vec<String> = page.entries.iter().map(|e| e.key.to_string()).collect();
    ensure!(keys == vec!["jobs/migrate".to_owned()], "listed {keys:?}");
    ensure!(
        store
            .get(&ctx, &Key::new("jobs/migrate/.lock")?)
            .await?
            .is_none(),
        "get shows the lock key"
    );
    let (code, out, err) = consul_lock("-timeout=2s", words(&["consul", "version"])).await?;
    ensure!(
        code != 0,
        "consul lock got a lock kvmap holds: exit {code} {out:?} {err:?}"
    );
    eprintln!("consul lock while kvmap holds: exit {code}, {}", err.trim());
    ensure!(!g.is_lost(), "kvmap lost its lease to consul lock");
    let first = g.token();
    g.release().await?;
    ensure!(
        lock_entry(&base, &lock_key).await?.is_none(),
        "the lock key is left after the release"
    );

    // 2. Released: `consul lock` gets it at once.
    let (code, out, err) = consul_lock("-timeout=5s", words(&["consul", "version"])).await?;
    ensure!(
        code == 0 && out.contains("Consul v"),
        "consul lock after the release: exit {code} {out:?} {err:?}"
    );

    // 3. `consul lock` holds it: kvmap waits, then gets it with a higher token.
    // The holder's child waits 4 s for another lock kvmap holds (there is
    // no `sleep` in the image), then exits.
    let blocker = store
        .lock(
            &ctx,
            &Key::new("jobs/blocker")?,
            kvmap_core::LockOptions::try_lock(ttl),
        )
        .await?;
    let blocker_prefix = format!("{p}jobs/blocker");
    let child = words(&[
        "consul",
        "lock",
        "-shell=false",
        &flag,
        "-timeout=4s",
        &blocker_prefix,
        "consul",
        "version",
    ]);
    let holder = consul_lock("-timeout=5s", child);
    let kvmap_side = async {
        wait_for(
            "consul lock to hold the key",
            Duration::from_secs(8),
            || async {
                let e = lock_entry(&base, &lock_key).await?;
                Ok(
                    e.filter(|e| e["Session"].as_str().is_some_and(|s| !s.is_empty()))
                        .map(|_| ()),
                )
            },
        )
        .await?;
        let busy = store
            .lock(&ctx, &k, kvmap_core::LockOptions::try_lock(ttl))
            .await;
        ensure!(
            matches!(&busy, Err(e) if e.kind() == ErrorKind::Locked),
            "kvmap try-lock while consul lock holds: {:?}",
            busy.map(|g| g.token())
        );
        let started = std::time::Instant::now();
        let wait_ctx = Context::new().with_timeout(Duration::from_secs(30));
        let g = store
            .lock(&wait_ctx, &k, kvmap_core::LockOptions::new(ttl))
            .await?;
        Ok::<_, anyhow::Error>((g, started.elapsed()))
    };
    let (held, got) = tokio::join!(holder, kvmap_side);
    let (code, _, err) = held?;
    let (g, waited) = got?;
    blocker.release().await?;
    ensure!(
        code == 0,
        "consul lock holding for 4 s: exit {code} {err:?}"
    );
    ensure!(g.token() > first, "token {} not above {first}", g.token());
    eprintln!(
        "kvmap waited {:.2}s for `consul lock` (holding for 4 s) to finish",
        waited.as_secs_f64()
    );
    g.release().await?;

    // 4. A value at the lock key that is not a lock is never overwritten.
    let cli = Cli::new(dev.node(), &flag);
    let data_lock = format!("{p}data/.lock");
    cli.kv_ok("put", &[&data_lock, "not a lock"]).await?;
    let e = store
        .lock(
            &ctx,
            &Key::new("data")?,
            kvmap_core::LockOptions::try_lock(ttl),
        )
        .await
        .err()
        .ok_or_else(|| anyhow!("locked over a data key"))?;
    ensure!(e.kind() == ErrorKind::InvalidData, "lock over data: {e}");
    ensure!(
        cli.get_bytes(&data_lock).await?.as_deref() == Some(&b"not a lock"[..]),
        "the data at the lock key changed"
    );
    // A data key named `.lock` (not a lock's flags) reads back as data.
    ensure!(
        store.get(&ctx, &Key::new("data/.lock")?).await?.is_some(),
        "a data key named .lock is hidden"
    );

    // 5. No kvmap session left behind (pending ones go after PENDING_IDLE).
    wait_for("kvmap lock sessions to be destroyed", WAIT, || async {
        Ok(kvmap_sessions(&base).await?.is_empty().then_some(()))
    })
    .await?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let infra = Arc::new(common::runtime());
    if let Some(code) = common::skip_without_docker(&infra) {
        return code;
    }
    let env = Arc::new(Env {
        dev: Lazy::new(ConsulDev::start),
        tag: common::run_tag(),
    });
    macro_rules! t {
        ($name:literal, $f:ident) => {{
            let env = env.clone();
            (
                $name,
                common::trial(&infra, move || async move { $f(&env).await }),
            )
        }};
    }
    let trials = vec![
        t!(
            "consul_interop_kvmap_writes_read_back_exact_by_consul_cli",
            kvmap_to_cli
        ),
        t!(
            "consul_interop_cli_writes_are_normal_kvmap_entries",
            cli_to_kvmap
        ),
        t!("consul_interop_foreign_flags_mean_no_expiry", foreign_flags),
        t!(
            "consul_interop_ttl_in_tagged_flags_then_reaped",
            ttl_flags_and_reaping
        ),
        t!(
            "consul_interop_external_writes_in_cas_conditions",
            cas_with_external_writes
        ),
        t!(
            "consul_interop_watch_sees_cli_writes_and_deletes",
            watch_sees_cli
        ),
        t!("consul_interop_key_prefix_isolation", key_prefix_isolation),
        t!("consul_interop_txn_and_value_limits", limits),
        t!(
            "consul_interop_key_watch_sees_every_put",
            key_watch_every_put
        ),
        t!(
            "consul_interop_ttl_entry_rewritten_by_cli_is_kept",
            ttl_vs_external_rewrite
        ),
        t!(
            "consul_interop_kvmap_lock_and_consul_lock_exclude_each_other",
            locks_exclude_consul_lock
        ),
    ];
    let code = common::run_trials(trials);
    infra.block_on(async move { drop(env) });
    code
}
