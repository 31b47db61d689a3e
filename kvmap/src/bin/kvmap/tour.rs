//! `kvmap tour`: the whole contract on one store, narrated.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kvmap::{
    Batch, Context, Key, KvStore, KvStoreExt, ListRequest, PutOptions, Result, WatchRequest,
};

use crate::commands::{describe, describe_event};

pub(crate) async fn run(store: Arc<dyn KvStore>) -> Result<()> {
    let ctx = Context::new().with_timeout(Duration::from_secs(30));
    println!("store: {}", store.name());

    // A fresh run prefix, so the demo can run again on the same database.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let prefix = format!("demo/{run}/");
    let key = |s: &str| Key::new(format!("{prefix}{s}"));

    println!("\n1. watch {prefix} (registered before the writes below)");
    let mut watch = store
        .watch(&ctx, WatchRequest::prefix(prefix.clone()))
        .await?;

    println!("\n2. write, read, compare-and-swap");
    let user = key("users/ada")?;
    let r1 = store
        .create(&ctx, &user, r#"{"name":"ada","visits":1}"#)
        .await?;
    println!("   create {user} -> revision {r1}");
    match store.create(&ctx, &user, "again").await {
        Err(e) => println!("   second create -> {e}"),
        Ok(r) => println!("   second create unexpectedly wrote revision {r}"),
    }
    let r2 = store
        .update(&ctx, &user, r#"{"name":"ada","visits":2}"#, r1)
        .await?;
    println!("   update if revision {r1} -> revision {r2}");
    match store.update(&ctx, &user, "stale", r1).await {
        Err(e) => println!("   update with stale revision {r1} -> {e}"),
        Ok(r) => println!("   stale update unexpectedly wrote revision {r}"),
    }
    if let Some(e) = store.get(&ctx, &user).await? {
        println!("   get -> {}", describe(&e));
    }

    println!("\n3. a batch and a key with a 1s ttl");
    let batch = Batch::new()
        .put(key("users/grace")?, r#"{"name":"grace"}"#)
        .put(key("users/linus")?, r#"{"name":"linus"}"#)
        .put(key("config/theme")?, "dark");
    let outcomes = store.apply(&ctx, batch).await?;
    println!(
        "   batch of {} ops -> {:?}",
        outcomes.len(),
        outcomes.iter().map(|o| o.is_ok()).collect::<Vec<_>>()
    );
    let session = key("sessions/s1")?;
    store
        .put(
            &ctx,
            &session,
            "token".into(),
            PutOptions::default().with_ttl(Duration::from_secs(1)),
        )
        .await?;

    println!("\n4. list {prefix}users/ in key order");
    let page = store
        .list(&ctx, &ListRequest::prefix(format!("{prefix}users/")))
        .await?;
    for e in &page.entries {
        println!("   {}", describe(e));
    }

    println!("\n5. wait for the ttl, delete one key");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    println!(
        "   {session} after 1.5s -> {:?}",
        store.get(&ctx, &session).await?.map(|e| e.value)
    );
    store.remove(&ctx, &key("config/theme")?).await?;

    println!("\n6. the watch saw, in order:");
    // 1 create + 1 update + 3 batch puts + 1 ttl put + 1 expiry + 1 delete.
    let want = 8;
    let mut seen = 0;
    while seen < want {
        match tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
            Ok(Some(ev)) => {
                println!("   {}", describe_event(&ev?));
                seen += 1;
            }
            Ok(None) => break,
            Err(_) => {
                println!("   (no more events within 5s)");
                break;
            }
        }
    }
    println!("\ndone: {seen} events; run `kvmap list demo/` to see what is left");
    Ok(())
}
