//! The metadata database and the moments table, on SQLite and on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use common::db::Db;
use common::moment::{self, State};
use common::testing::on_both;

#[tokio::test]
async fn moments_round_trip_and_per_user_isolation() {
    on_both(|db: Db| async move {
        let id = common::ids::new_id();
        let m = moment::create(&db, &id, "alice", State::Uploading, Some("uploads/x"))
            .await
            .unwrap();
        assert_eq!(m.state, State::Uploading);

        let got = moment::get_for_user(&db, &id, "alice")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.id, id);
        assert_eq!(got.source_key.as_deref(), Some("uploads/x"));
        assert_eq!(got.renditions, serde_json::json!([]));
        // another user's moment is indistinguishable from a missing one
        assert!(
            moment::get_for_user(&db, &id, "bob")
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            moment::get_for_user(&db, "missing", "alice")
                .await
                .unwrap()
                .is_none()
        );

        assert!(
            moment::set_state(&db, &id, State::Transcoding, None)
                .await
                .unwrap()
        );
        let none = moment::Detail::default();
        moment::set_progress(&db, &id, 0.25, &none).await.unwrap();
        moment::set_progress(&db, &id, f64::NAN, &none)
            .await
            .unwrap();
        let detail = moment::Detail {
            streaming: Some(false),
            reason: Some("moov at the end of the file".into()),
            encoded_s: Some(3.5),
            received_s: None,
            poster_key: Some(format!("hls/{id}/poster.jpg")),
        };
        moment::set_progress(&db, &id, 0.5, &detail).await.unwrap();
        let got = moment::get(&db, &id).await.unwrap().unwrap();
        assert_eq!(got.state, State::Transcoding);
        assert!((got.progress - 0.5).abs() < 1e-9);
        assert_eq!(got.detail, detail, "the detail JSON round-trips");

        assert!(
            moment::set_state(&db, &id, State::Failed, Some("not a video"))
                .await
                .unwrap()
        );
        // final states never change again
        assert!(
            !moment::set_state(&db, &id, State::Ready, None)
                .await
                .unwrap()
        );
        let got = moment::get(&db, &id).await.unwrap().unwrap();
        assert_eq!(got.state, State::Failed);
        assert_eq!(got.error.as_deref(), Some("not a video"));
        db.ping().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn sqlite_uses_wal_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("nested/dir/m.db").display());
    let db = Db::connect(&url, 2).await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(mode.to_lowercase(), "wal");
    moment::create(&db, "m1", "alice", State::Queued, None)
        .await
        .unwrap();
    db.close().await;
    // migrations are idempotent and data persists
    let db = Db::connect(&url, 2).await.unwrap();
    assert!(moment::get(&db, "m1").await.unwrap().is_some());
}

#[tokio::test]
async fn bad_urls_give_clear_errors() {
    let err = Db::connect("mysql://x", 1).await.unwrap_err().to_string();
    assert!(err.contains("unsupported database URL"), "{err}");
    let port = common::testing::free_port();
    let err = Db::connect(&format!("postgres://u:pw@127.0.0.1:{port}/x"), 1)
        .await
        .unwrap_err();
    assert!(err.is_unreachable(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("not reachable") && !text.contains("pw@"),
        "{text}"
    );
}
