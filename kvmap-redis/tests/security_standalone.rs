//! Security on standalone servers: wrong password, an ACL user without key
//! rights, TLS with the generated CA and with a wrong CA.

mod common;

use std::sync::Arc;

use anyhow::{anyhow, ensure};
use integration_tests::{RedisAcl, RedisTls};
use kvmap_core::{Context, ErrorKind, Key, KvStore, KvStoreExt};
use kvmap_redis::{RedisConfig, RedisStore};

fn main() -> std::process::ExitCode {
    let infra = Arc::new(common::runtime());
    if let Some(code) = common::skip_without_docker(&infra) {
        return code;
    }
    let (acl, tls) = infra
        .block_on(async {
            Ok::<_, anyhow::Error>((RedisAcl::start().await?, RedisTls::start().await?))
        })
        .expect("start acl and tls servers");
    let acl_port = acl.port();
    let tls_url = tls.url();
    let ca = tls.ca_pem().to_owned();
    let tls_url2 = tls_url.clone();
    let trials = vec![
        (
            "standalone_wrong_password_is_unauthenticated",
            common::trial(&infra, move || async move {
                let url = format!("redis://127.0.0.1:{acl_port}");
                let cfg = RedisConfig::standalone(url)
                    .with_credentials(Some(RedisAcl::USER.into()), "wrong");
                let e = RedisStore::connect(cfg)
                    .await
                    .err()
                    .ok_or_else(|| anyhow!("connected with a wrong password"))?;
                eprintln!("wrong password: {e}");
                ensure!(
                    e.kind() == ErrorKind::Unauthenticated,
                    "kind {:?}: {e}",
                    e.kind()
                );
                ensure!(
                    !format!("{e} {e:?}").contains("wrong\""),
                    "password leaked in {e:?}"
                );
                // No credentials at all (the default user is off) is the same.
                let e = RedisStore::connect(RedisConfig::standalone(format!(
                    "redis://127.0.0.1:{acl_port}"
                )))
                .await
                .err()
                .ok_or_else(|| anyhow!("connected without credentials"))?;
                ensure!(
                    e.kind() == ErrorKind::Unauthenticated,
                    "no auth: kind {:?}: {e}",
                    e.kind()
                );
                Ok(())
            }),
        ),
        (
            "standalone_acl_user_without_rights_is_permission_denied",
            common::trial(&infra, move || async move {
                let url = format!("redis://127.0.0.1:{acl_port}");
                let cfg = RedisConfig::standalone(url).with_credentials(
                    Some(RedisAcl::NOKEYS_USER.into()),
                    RedisAcl::NOKEYS_PASSWORD,
                );
                let store = RedisStore::connect(cfg).await?;
                let k = Key::new("secret/a")?;
                let ctx = Context::new();
                let e = store
                    .set(&ctx, &k, "x")
                    .await
                    .err()
                    .ok_or_else(|| anyhow!("write allowed"))?;
                eprintln!("no rights, put: {e}");
                ensure!(
                    e.kind() == ErrorKind::PermissionDenied,
                    "put kind {:?}: {e}",
                    e.kind()
                );
                let e = store
                    .get(&ctx, &k)
                    .await
                    .err()
                    .ok_or_else(|| anyhow!("read allowed"))?;
                ensure!(
                    e.kind() == ErrorKind::PermissionDenied,
                    "get kind {:?}: {e}",
                    e.kind()
                );
                // The full-rights user works.
                let url = format!("redis://127.0.0.1:{acl_port}");
                let ok = RedisStore::connect(
                    RedisConfig::standalone(url)
                        .with_credentials(Some(RedisAcl::USER.into()), RedisAcl::PASSWORD),
                )
                .await?;
                ok.set(&ctx, &k, "x").await?;
                Ok(())
            }),
        ),
        (
            "standalone_tls_with_generated_ca_works",
            common::trial(&infra, move || async move {
                let store =
                    RedisStore::connect(RedisConfig::standalone(tls_url).with_tls_ca_pem(ca))
                        .await?;
                let ctx = Context::new();
                let k = Key::new("tls/a")?;
                let rev = store.set(&ctx, &k, "over tls").await?;
                let e = store
                    .get(&ctx, &k)
                    .await?
                    .ok_or_else(|| anyhow!("missing"))?;
                ensure!(e.revision == rev && e.value == "over tls");
                Ok(())
            }),
        ),
        (
            "standalone_tls_wrong_ca_fails_clearly",
            common::trial(&infra, move || async move {
                common::wrong_ca_is_refused(RedisConfig::standalone(tls_url2)).await
            }),
        ),
    ];
    let code = common::run_trials(trials);
    infra.block_on(async move { drop((acl, tls)) });
    code
}
