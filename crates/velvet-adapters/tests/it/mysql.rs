//! The `mysql_user` source against the machine's MariaDB: a real login over TCP proves each
//! password. Each test makes its own admin and users with unique names and drops them.

use sqlx::Connection;
use velvet_adapters::source::{self, Source};
use velvet_core::config::{MysqlStrategy, SourceSpec};
use velvet_core::secret::SecretValue;

fn root(sql: &str) {
    velvet_testkit::servers::mariadb_root(sql);
}

/// Users made for one test, dropped when it ends (also when it fails).
struct Accounts(Vec<String>);

impl Drop for Accounts {
    fn drop(&mut self) {
        for a in &self.0 {
            let _ = std::process::Command::new("mariadb")
                .args(["-uroot", "-e", &format!("DROP USER IF EXISTS {a}")])
                .output();
        }
    }
}

struct Fixture {
    admin_url: String,
    /// Dropped with the fixture: the users go with it.
    _accounts: Accounts,
}

/// An admin at 127.0.0.1 with `grants`, and app users at `%` with the given passwords.
fn fixture(grants: &[&str], users: &[(&str, &str)]) -> (Fixture, Vec<String>) {
    let admin = velvet_testkit::unique_name("vadm");
    let admin_pw = hex::encode(velvet_testkit::unique_name("pw"));
    root(&format!(
        "CREATE USER '{admin}'@'127.0.0.1' IDENTIFIED BY '{admin_pw}'"
    ));
    let mut accounts = Accounts(vec![format!("'{admin}'@'127.0.0.1'")]);
    for g in grants {
        root(&format!("GRANT {g} TO '{admin}'@'127.0.0.1'"));
    }
    let mut names = vec![];
    for (prefix, pw) in users {
        let u = velvet_testkit::unique_name(prefix);
        root(&format!("CREATE USER '{u}'@'%' IDENTIFIED BY '{pw}'"));
        accounts.0.push(format!("'{u}'@'%'"));
        names.push(u);
    }
    let admin_url = format!("mysql://{admin}:{admin_pw}@127.0.0.1:3306");
    (
        Fixture {
            admin_url,
            _accounts: accounts,
        },
        names,
    )
}

const ADMIN_GRANTS: &[&str] = &["CREATE USER ON *.*", "SELECT ON mysql.global_priv"];

async fn login(user: &str, password: &str) -> bool {
    let opts = sqlx::mysql::MySqlConnectOptions::new()
        .host("127.0.0.1")
        .port(3306)
        .username(user)
        .password(password);
    match sqlx::mysql::MySqlConnection::connect_with(&opts).await {
        Ok(c) => {
            let _ = c.close().await;
            true
        }
        Err(_) => false,
    }
}

fn source(f: &Fixture, strategy: MysqlStrategy) -> Box<dyn Source> {
    let spec = SourceSpec::MysqlUser {
        admin_url_env: "MYSQL_ADMIN".into(),
        strategy,
        host: "%".into(),
    };
    let url = f.admin_url.clone();
    source::Sources::default()
        .build(&spec, &move |n: &str| {
            (n == "MYSQL_ADMIN").then(|| url.clone())
        })
        .unwrap()
}

fn password(v: &SecretValue) -> String {
    v.get("password").unwrap().expose().to_string()
}

fn user(v: &SecretValue) -> String {
    v.get("username").unwrap().expose().to_string()
}

#[tokio::test]
async fn single_keeps_the_old_password_until_revoke_and_revert_restores_it() {
    let (f, names) = fixture(
        ADMIN_GRANTS,
        &[("vapp", "before-velvet"), ("vother", "other-pw")],
    );
    let (app, other) = (&names[0], &names[1]);
    let s = source(
        &f,
        MysqlStrategy::Single {
            user: app.to_string(),
        },
    );
    let found = s.probe().await.unwrap();
    assert!(
        found.contains(app) && found.contains("CREATE USER"),
        "{found}"
    );

    // A first rotation: the password from before Velvet keeps working until revoke.
    let v1 = s.generate(None).unwrap();
    assert_eq!(&user(&v1), app);
    s.activate(&v1, None).await.unwrap();
    s.activate(&v1, None).await.unwrap(); // repeated after a crash: no change
    s.verify(&v1).await.unwrap();
    assert!(login(app, &password(&v1)).await, "the new password logs in");
    assert!(
        login(app, "before-velvet").await,
        "the old one still does between mint and revoke"
    );
    s.revoke(&v1, None).await.unwrap();
    assert!(login(app, &password(&v1)).await);
    assert!(
        !login(app, "before-velvet").await,
        "only the new one after revoke"
    );

    // A second rotation, abandoned: revert leaves exactly the previous password.
    let v2 = s.generate(Some(&v1)).unwrap();
    s.activate(&v2, Some(&v1)).await.unwrap();
    assert!(login(app, &password(&v1)).await && login(app, &password(&v2)).await);
    s.revert(&v2, Some(&v1)).await.unwrap();
    s.revert(&v2, Some(&v1)).await.unwrap(); // idempotent
    assert!(login(app, &password(&v1)).await, "the previous works again");
    assert!(
        !login(app, &password(&v2)).await,
        "the reverted one does not"
    );

    // I7: another account on the server is untouched throughout.
    assert!(login(other, "other-pw").await);
    drop(f);
}

#[tokio::test]
async fn alternating_rekeys_the_idle_user_and_retires_the_other_at_revoke() {
    let (f, names) = fixture(ADMIN_GRANTS, &[("vala", "a-before"), ("valb", "b-before")]);
    let (a, b) = (&names[0], &names[1]);
    let s = source(
        &f,
        MysqlStrategy::Alternating {
            users: [a.to_string(), b.to_string()],
        },
    );
    let v1 = s.generate(None).unwrap();
    assert_eq!(&user(&v1), a);
    s.activate(&v1, None).await.unwrap();
    s.verify(&v1).await.unwrap();
    assert!(
        login(b, "b-before").await,
        "the other user works until revoke"
    );
    s.revoke(&v1, None).await.unwrap();
    assert!(
        !login(b, "b-before").await,
        "a first revoke retires the other user's pre-Velvet password"
    );
    assert!(login(a, &password(&v1)).await);

    let v2 = s.generate(Some(&v1)).unwrap();
    assert_eq!(&user(&v2), b, "the next version goes to the idle user");
    s.activate(&v2, Some(&v1)).await.unwrap();
    s.verify(&v2).await.unwrap();
    assert!(
        login(a, &password(&v1)).await,
        "the previous user works until revoke"
    );
    s.revoke(&v2, Some(&v1)).await.unwrap();
    assert!(!login(a, &password(&v1)).await);
    assert!(login(b, &password(&v2)).await);
    drop(f);
}

#[tokio::test]
async fn refusals_name_the_missing_privilege_or_account_and_never_the_password() {
    // No CREATE USER: the probe says which grant to add, and minting fails the same way.
    let (f, names) = fixture(
        &["SELECT ON mysql.global_priv"],
        &[("vapp", "before-velvet")],
    );
    let s = source(
        &f,
        MysqlStrategy::Single {
            user: names[0].clone(),
        },
    );
    let e = s.probe().await.unwrap_err().to_string();
    assert!(e.contains("GRANT CREATE USER ON *.*"), "{e}");
    let v = s.generate(None).unwrap();
    let e = s.activate(&v, None).await.unwrap_err().to_string();
    assert!(e.contains("CREATE USER"), "{e}");
    assert!(
        !e.contains(&password(&v)),
        "an error never carries the value"
    );
    assert!(login(&names[0], "before-velvet").await, "nothing changed");
    drop(f);

    // No read of mysql.global_priv: named, with its grant.
    let (f, names) = fixture(&["CREATE USER ON *.*"], &[("vapp", "before-velvet")]);
    let s = source(
        &f,
        MysqlStrategy::Single {
            user: names[0].clone(),
        },
    );
    let e = s.probe().await.unwrap_err().to_string();
    assert!(e.contains("GRANT SELECT ON mysql.global_priv"), "{e}");
    drop(f);

    // An account that does not exist, and an admin password that is wrong.
    let (f, _) = fixture(ADMIN_GRANTS, &[]);
    let missing = velvet_testkit::unique_name("vnobody");
    let s = source(
        &f,
        MysqlStrategy::Single {
            user: missing.clone(),
        },
    );
    let e = s.probe().await.unwrap_err().to_string();
    assert!(e.contains(&missing) && e.contains("does not exist"), "{e}");
    // The same admin with a wrong password.
    let bad = Fixture {
        admin_url: f.admin_url.replace("@127.0.0.1", "wrong@127.0.0.1"),
        _accounts: Accounts(vec![]),
    };
    let secret = bad.admin_url["mysql://".len()..]
        .split_once('@')
        .unwrap()
        .0
        .split_once(':')
        .unwrap()
        .1
        .to_string();
    let e = source(&bad, MysqlStrategy::Single { user: missing })
        .probe()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("logging in to MariaDB as admin"), "{e}");
    assert!(
        !e.contains(&secret),
        "the admin password is never shown: {e}"
    );
    drop(f);
}
