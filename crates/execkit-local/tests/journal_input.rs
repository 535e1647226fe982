//! What the journal keeps of a session's secrets (issue 13 item 7), end to
//! end through a real shell: a password typed at a prompt is journaled as
//! hidden input, and the value of a secret-named setting is masked wherever
//! it shows — while the agent's own results stay unmasked.

use std::sync::Arc;
use std::time::Duration;

use execkit_core::journal::Journal;
use execkit_core::redact::Redactor;
use execkit_core::Observer;
use execkit_core::{RunOptions, Session, SessionConfig};
use execkit_local as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_passwords_and_secret_settings_stay_out_of_the_journal() {
    let dir = std::env::temp_dir().join(format!("execkit-journal-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("journal.jsonl");
    let journal = Journal::open(&path, Redactor::default()).unwrap();
    let mut config = SessionConfig::default();
    config.observer = Some(Arc::new(Observer::new(journal)));
    config.spool_dir = dir.clone();
    config
        .env
        .push(("DEPLOY_API_TOKEN".into(), "zq7-settings-value-91".into()));
    let mut s = Session::open("local:/bin/bash", config).await.unwrap();

    let r = s
        .run(
            "echo value=$DEPLOY_API_TOKEN",
            RunOptions::timeout(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    assert_eq!(
        r.output, "value=zq7-settings-value-91",
        "results are not masked"
    );

    let opts =
        RunOptions::timeout(Duration::from_secs(20)).yield_after(Some(Duration::from_millis(300)));
    let r = s
        .run("printf 'Password: '; read -r pw; echo \"got ${#pw}\"", opts)
        .await
        .unwrap();
    assert!(r.running, "{r:?}");
    s.send_input("hunter2-typed-secret\n").await.unwrap();
    let r = s.poll(Duration::from_secs(10)).await.unwrap();
    assert_eq!(r.output.trim(), "got 20", "{r:?}");
    // An ordinary answer is journaled as typed.
    let opts =
        RunOptions::timeout(Duration::from_secs(20)).yield_after(Some(Duration::from_millis(300)));
    let r = s
        .run("printf 'name? '; read -r n; echo \"hi $n\"", opts)
        .await
        .unwrap();
    assert!(r.running, "{r:?}");
    s.send_input("bob\n").await.unwrap();
    let r = s.poll(Duration::from_secs(10)).await.unwrap();
    assert_eq!(r.output.trim(), "hi bob", "{r:?}");
    s.close().await.unwrap();

    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains("hunter2-typed-secret"),
        "typed password in the journal:\n{text}"
    );
    assert!(
        !text.contains("zq7-settings-value-91"),
        "secret setting in the journal:\n{text}"
    );
    let inputs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "input")
        .collect();
    assert_eq!(inputs.len(), 2, "{inputs:?}");
    assert_eq!(inputs[0]["hidden"], true, "{inputs:?}");
    assert_eq!(inputs[1]["text"], "bob\n", "{inputs:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
