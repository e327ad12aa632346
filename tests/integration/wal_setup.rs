//! Setup checks before streaming: missing privileges, a slot of another plugin, and the
//! refusal to drop a slot that still holds unconsumed changes.

use crate::common;

use common::fresh_db;
use common::wal::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_errors_say_what_to_change() {
    let db = fresh_db("preflight").await;
    db.exec(&format!(
        "CREATE ROLE plain_user LOGIN PASSWORD '{}'",
        common::ROLE_PASSWORD
    ))
    .await;
    let url = common::url_as(&db.url, "plain_user");
    let client = lakets::db::connect(&url).await.unwrap();
    let err = lakets::wal::slot::preflight(&client, &db.name)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ALTER ROLE \"plain_user\" REPLICATION"),
        "{err}"
    );

    // A slot of another plugin is refused, not reused.
    let other = format!("{}_other", db.name);
    db.exec(&format!(
        "SELECT pg_create_logical_replication_slot('{other}', 'test_decoding')"
    ))
    .await;
    let err = lakets::wal::slot::preflight(&db.client, &other)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("uses plugin"), "{err}");

    // Dropping a slot that still holds unconsumed published changes needs --force.
    let mut db = db;
    setup(&mut db).await;
    lakets::catalog::replication::ensure_publication(&db.client, "lakets")
        .await
        .unwrap();
    let slot = db.name.clone();
    lakets::wal::slot::ensure_slot(&db.client, &slot)
        .await
        .unwrap();
    // Committed and flushed, so that logical decoding can see it.
    db.exec("SET synchronous_commit = on").await;
    db.exec("INSERT INTO events VALUES (now(), 1, 'a')").await;
    let err = lakets::catalog::replication::drop_slot(&db.client, &slot, "lakets", false)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("--force"), "{err}");
    assert_eq!(slot_active(&db).await, Some(false), "still there");
    lakets::catalog::replication::drop_slot(&db.client, &slot, "lakets", true)
        .await
        .unwrap();
    assert_eq!(slot_active(&db).await, None, "gone");
}

/// A publication made by hand that leaves out operations (or publishes partitions as
/// themselves) is completed, so no change silently misses the operators.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_made_publication_is_completed() {
    let mut db = fresh_db("handmade_pub").await;
    setup(&mut db).await;
    db.exec(
        "CREATE PUBLICATION handmade FOR TABLE events
           WITH (publish = 'insert', publish_via_partition_root = false)",
    )
    .await;
    lakets::catalog::replication::ensure_publication(&db.client, "handmade")
        .await
        .unwrap();
    let complete: bool = db
        .scalar(
            "SELECT pubviaroot AND pubinsert AND pubupdate AND pubdelete AND pubtruncate
               FROM pg_publication WHERE pubname = 'handmade'",
        )
        .await;
    assert!(complete);
}
