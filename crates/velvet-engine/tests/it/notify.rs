//! Notifications end to end against real receivers: a failed rotation reaches a CloudEvents
//! webhook (signed), a Slack-compatible endpoint and a real SMTP server (aiosmtpd); a server
//! that refuses the login leaves its channel failing and the rotation untouched; a pause for
//! an approval says what is needed; a failing channel is retried, then given up.

use crate::harness::parse;
use chrono::Utc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use velvet_core::rotation::JobStatus;
use velvet_engine::{Engine, EngineOptions};
use velvet_fakes::inbox::Inbox;
use velvet_store::{Dialect, NewJob, Store};
use velvet_testkit::Fixture;
use velvet_testkit::smtp::Smtp;

struct Setup {
    f: Fixture,
    engine: Arc<Engine>,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn setup(yaml: &str, env: Vec<(&'static str, String)>) -> Setup {
    let f = Fixture::new(Dialect::Sqlite).await;
    let config = parse(f.dir.path(), yaml);
    f.store.reconcile(&config.tokens, Utc::now()).await.unwrap();
    let mut opts = EngineOptions::for_this_process();
    opts.poll_interval = Duration::from_millis(20);
    opts.lead_scheduler = false;
    opts.env = Arc::new(move |n| env.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone()));
    let engine = Engine::new(
        f.store.clone(),
        f.keyring.clone(),
        velvet_core::config::live(config),
        opts,
    );
    let (stop, rx) = tokio::sync::watch::channel(false);
    engine.start(rx);
    Setup {
        f,
        engine,
        _stop: stop,
    }
}

async fn kickoff(s: &Setup, token: &str) -> String {
    s.engine
        .kickoff(&NewJob {
            token,
            flow: velvet_core::config::FlowType::Auto,
            requested_by: "test",
            requested_role: Some(velvet_core::identity::Role::Operator),
            reason: None,
            idempotency: None,
            schedule_slot: None,
            given: None,
        })
        .await
        .unwrap()
        .job_id
}

async fn until_status(
    store: &dyn Store,
    id: &str,
    what: impl Fn(&velvet_core::job::RotationJob) -> bool,
) {
    let start = Instant::now();
    loop {
        let j = store.get_job(id).await.unwrap().unwrap();
        if what(&j) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{j:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Routes and delivers until nothing is due, as the leader's loop does.
async fn drain(s: &Setup) {
    s.engine.route_notifications().await.unwrap();
    s.engine.deliver_notifications(Utc::now()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rotation_reaches_webhook_slack_and_email_and_a_refused_login_fails_its_channel_only()
 {
    let (inbox, base) = Inbox::start().await;
    let smtp = Smtp::start();
    let yaml = format!(
        r#"
defaults: {{retry: {{attempts: 1, initial_backoff: 10ms, max_backoff: 10ms}}}}
notifications:
  - {{name: pager, kind: webhook, url: "{base}/pager", signing_secret_env: PAGER_SECRET, on: [failed]}}
  - {{name: chat, kind: slack, url_env: SLACK_URL, on: [failed, awaiting_approval]}}
  - name: mail
    kind: email
    smtp: {{host: 127.0.0.1, port: {port}, tls: none, username_env: SMTP_USER, password_env: SMTP_PASS}}
    from: velvet@example.com
    to: [ops@example.com, oncall@example.com]
    on: [failed]
  - name: wrong-login
    kind: email
    smtp: {{host: 127.0.0.1, port: {port}, tls: none, username_env: SMTP_USER, password_env: WRONG_PASS}}
    from: velvet@example.com
    to: [ops@example.com]
    on: [failed]
  - {{name: quiet, kind: webhook, url: "{base}/quiet", signing_secret_env: PAGER_SECRET, on: [succeeded], match: {{tokens: [nothing-*]}}}}
tokens:
  - name: broken
    flow: auto
    source: {{kind: random}}
    consumers:
      - {{name: deploy, kind: exec, command: [sh, -c, 'exit 3']}}
"#,
        port = smtp.port
    );
    let s = setup(
        &yaml,
        vec![
            ("PAGER_SECRET", "pager-secret".into()),
            ("SLACK_URL", format!("{base}/slack")),
            ("SMTP_USER", smtp.user.clone()),
            ("SMTP_PASS", smtp.password.clone()),
            ("WRONG_PASS", "not-the-password".into()),
        ],
    )
    .await;
    let id = kickoff(&s, "broken").await;
    until_status(&*s.f.store, &id, |j| j.state.status == JobStatus::Failed).await;
    drain(&s).await;

    let got = inbox.received();
    let pager: Vec<_> = got.iter().filter(|r| r.path == "/pager").collect();
    assert_eq!(pager.len(), 1, "{got:?}");
    let ev = &pager[0].body;
    assert_eq!(ev["specversion"], "1.0");
    assert_eq!(ev["type"], "dev.velvet.failed");
    assert_eq!(ev["subject"], "broken");
    assert_eq!(ev["data"]["job_id"], id.as_str());
    assert!(ev["id"].as_str().unwrap().starts_with("ntf_"));
    assert_eq!(
        pager[0].headers["content-type"],
        "application/cloudevents+json"
    );
    let sig = pager[0].headers["velvet-signature"].to_str().unwrap();
    let t: i64 = sig
        .split(',')
        .next()
        .unwrap()
        .trim_start_matches("t=")
        .parse()
        .unwrap();
    assert_eq!(
        sig,
        velvet_adapters::consumer::webhook_signature("pager-secret", t, &pager[0].raw)
    );
    assert!(
        ev["data"]["summary"]
            .as_str()
            .unwrap()
            .contains("failed at distribute"),
        "{ev}"
    );

    let slack: Vec<_> = got.iter().filter(|r| r.path == "/slack").collect();
    assert_eq!(slack.len(), 1);
    assert!(slack[0].body["text"].as_str().unwrap().contains("broken"));
    assert!(slack[0].body["blocks"].as_array().unwrap().len() >= 2);
    assert!(
        got.iter().all(|r| r.path != "/quiet"),
        "match and on both filter"
    );

    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert_eq!(mails[0].to, ["ops@example.com", "oncall@example.com"]);
    assert!(
        mails[0].data.contains("Subject: [velvet] failed"),
        "{}",
        mails[0].data
    );
    assert!(mails[0].data.contains(&format!("Job: {id}")));

    let deliveries = s.f.store.deliveries(50).await.unwrap();
    let by = |c: &str| deliveries.iter().find(|d| d.channel == c).unwrap().clone();
    for c in ["pager", "chat", "mail"] {
        assert_eq!(by(c).status, "delivered", "{c}");
    }
    let wrong = by("wrong-login");
    assert_eq!(wrong.status, "failed", "a refused login is not retried");
    assert!(
        wrong.last_error.as_deref().unwrap().contains("refused"),
        "{wrong:?}"
    );
    assert_eq!(
        s.f.store.failed_deliveries().await.unwrap(),
        vec![("wrong-login".to_string(), 1)]
    );
    // Delivered once: another pass sends nothing again.
    drain(&s).await;
    assert_eq!(inbox.received().len(), got.len());
    assert_eq!(smtp.mails().len(), 1);
    // No message carries a value: the only secret-looking strings are names.
    for r in inbox.received() {
        assert!(!String::from_utf8_lossy(&r.raw).contains("pager-secret"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_revoke_notifies_awaiting_approval_with_what_is_needed() {
    let (inbox, base) = Inbox::start().await;
    let yaml = r#"
defaults: {grace_period: 0s}
revocation_gates:
  - {name: production, match: {tags: [prod]}, require: {totp: true, approvals: 1, roles: [revoker, admin]}}
notifications:
  - {name: chat, kind: slack, url_env: SLACK_URL, on: [awaiting_approval, awaiting_confirmation, succeeded]}
tokens:
  - {name: api, tags: [prod], flow: auto, source: {kind: random}}
"#;
    let s = setup(yaml, vec![("SLACK_URL", format!("{base}/slack"))]).await;
    let id = kickoff(&s, "api").await;
    until_status(&*s.f.store, &id, |j| {
        j.state.awaiting == Some(velvet_core::rotation::Awaiting::ProceedRevoke)
    })
    .await;
    drain(&s).await;
    let got = inbox.received();
    assert_eq!(got.len(), 1, "{got:?}");
    let text = got[0].body["text"].as_str().unwrap();
    assert!(text.contains("awaiting approval"), "{text}");
    assert!(
        text.contains("gate `production`") && text.contains("1 approval(s) and a TOTP step-up"),
        "{text}"
    );
    assert!(
        text.contains(&format!("velvet rotations approve {id}")),
        "{text}"
    );
    let d = &s.f.store.deliveries(10).await.unwrap()[0];
    assert_eq!(d.event.event, "awaiting_approval");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_channel_is_retried_with_backoff_then_given_up() {
    let (inbox, base) = Inbox::start().await;
    inbox.answer(Some(axum::http::StatusCode::SERVICE_UNAVAILABLE));
    let yaml = format!(
        r#"
defaults: {{retry: {{attempts: 1, initial_backoff: 10ms, max_backoff: 10ms}}}}
notifications:
  - {{name: pager, kind: webhook, url: "{base}/pager", signing_secret_env: S, on: [failed]}}
tokens:
  - name: broken
    flow: auto
    source: {{kind: random}}
    consumers:
      - {{name: deploy, kind: exec, command: [sh, -c, 'exit 3']}}
"#
    );
    let s = setup(&yaml, vec![("S", "s".into())]).await;
    let id = kickoff(&s, "broken").await;
    until_status(&*s.f.store, &id, |j| j.state.status == JobStatus::Failed).await;
    drain(&s).await;
    let d = s.f.store.deliveries(10).await.unwrap()[0].clone();
    assert_eq!((d.status.as_str(), d.attempts), ("pending", 1));
    assert!(d.last_error.as_deref().unwrap().contains("503"), "{d:?}");
    let wait = d.next_attempt_at - Utc::now();
    assert!(wait > chrono::Duration::seconds(5), "backs off: {wait}");
    // Not due yet: nothing is sent.
    assert_eq!(s.engine.deliver_notifications(Utc::now()).await.unwrap(), 0);
    // Each later attempt waits longer, and the last one gives up.
    let mut at = d.next_attempt_at;
    for n in 2..=velvet_engine::NOTIFY_ATTEMPTS {
        assert_eq!(
            s.engine.deliver_notifications(at).await.unwrap(),
            1,
            "attempt {n}"
        );
        let d = s.f.store.deliveries(10).await.unwrap()[0].clone();
        assert_eq!(d.attempts, n);
        at = d.next_attempt_at;
    }
    let d = s.f.store.deliveries(10).await.unwrap()[0].clone();
    assert_eq!(d.status, "failed");
    // The receiver comes back: an event given up on stays given up (its state says so).
    inbox.answer(None);
    assert_eq!(
        s.engine
            .deliver_notifications(at + chrono::Duration::hours(2))
            .await
            .unwrap(),
        0
    );
    assert_eq!(velvet_engine::notify_backoff(0), Duration::from_secs(10));
    assert_eq!(velvet_engine::notify_backoff(30), Duration::from_secs(3600));
}
