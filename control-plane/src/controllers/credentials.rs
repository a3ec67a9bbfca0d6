//! Who the controllers act as — kube-controller-manager's
//! `--use-service-account-credentials`. The informers list and watch as the
//! controller manager itself (`system:kube-controller-manager`, whose role grants
//! `list`/`watch` on everything); each controller writes as the ServiceAccount
//! `kube-system/<controller>-controller` bound to its `system:controller:*` role, with
//! a token from the TokenRequest API that is renewed before it expires. So a
//! controller can do what upstream's role lets it, and no more.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Client;
use kube::api::{Api, PostParams};

/// The namespace of the controllers' ServiceAccounts.
const NAMESPACE: &str = "kube-system";
/// How long a controller's token lives (kube-controller-manager asks for an hour).
const TOKEN_SECONDS: i64 = 3600;

/// The controllers' credentials.
#[derive(Clone)]
pub enum Credentials {
    /// Every controller acts as the client's own identity.
    Shared(Client),
    /// Each controller acts as its own ServiceAccount; `manager` lists and watches
    /// and requests the tokens, `config` is where the accounts' clients connect
    /// (its credentials are replaced by the token), and the tokens are kept as files
    /// in `token_dir` (the clients re-read them every minute).
    ServiceAccounts {
        manager: Client,
        config: Box<kube::Config>,
        token_dir: PathBuf,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Shared(_) => write!(f, "Credentials::Shared"),
            Credentials::ServiceAccounts { token_dir, .. } => {
                write!(f, "Credentials::ServiceAccounts({})", token_dir.display())
            }
        }
    }
}

impl Credentials {
    /// The client the informers use (and the controller manager's own writes).
    pub fn manager(&self) -> Client {
        match self {
            Credentials::Shared(c) => c.clone(),
            Credentials::ServiceAccounts { manager, .. } => manager.clone(),
        }
    }
}

/// The clients handed out by [`Accounts::client`] and the token renewals that keep
/// them valid (run them beside the controllers).
pub struct Accounts {
    credentials: Credentials,
    clients: HashMap<String, Client>,
    renewals: Vec<BoxFuture<'static, ()>>,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Accounts({:?}, {} clients)",
            self.credentials,
            self.clients.len()
        )
    }
}

impl Accounts {
    pub fn new(credentials: Credentials) -> Self {
        Accounts {
            credentials,
            clients: HashMap::new(),
            renewals: Vec::new(),
        }
    }

    /// Obtains the first tokens of `accounts` all at once (one after another would
    /// hold every controller back by ~3 requests per account at start).
    pub async fn prepare(&mut self, accounts: &[&str]) {
        let Credentials::ServiceAccounts {
            manager,
            config,
            token_dir,
        } = &self.credentials
        else {
            return;
        };
        let (manager, config, token_dir) = (manager.clone(), config.clone(), token_dir.clone());
        let (manager, token_dir) = (&manager, &token_dir);
        let issued = futures_util::future::join_all(accounts.iter().map(|account| {
            let file = token_dir.join(format!("{account}.token"));
            async move {
                (
                    *account,
                    issue(manager, account, &file).await.map(|()| file),
                )
            }
        }))
        .await;
        for (account, result) in issued {
            let client = result.and_then(|file| token_client(&config, &file));
            match client {
                Ok(c) => {
                    self.clients.insert(account.to_owned(), c);
                    self.renew(manager.clone(), account, token_dir);
                }
                // Retried by `client`.
                Err(err) => tracing::warn!(%err, account, "no credentials for the controller yet"),
            }
        }
    }

    /// The client controller `account` (upstream's ServiceAccount name, such as
    /// `replicaset-controller`) acts with. Waits, retrying, until its first token.
    pub async fn client(&mut self, account: &str) -> Client {
        let Credentials::ServiceAccounts {
            manager,
            config,
            token_dir,
        } = &self.credentials
        else {
            return self.credentials.manager();
        };
        if let Some(c) = self.clients.get(account) {
            return c.clone();
        }
        let file = token_dir.join(format!("{account}.token"));
        let mut wait = Duration::from_millis(200);
        let client = loop {
            match issue(manager, account, &file)
                .await
                .and_then(|()| token_client(config, &file))
            {
                Ok(c) => break c,
                Err(err) => {
                    tracing::warn!(%err, account, "no credentials for the controller yet");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
            }
        };
        self.clients.insert(account.to_owned(), client.clone());
        let (manager, token_dir) = (manager.clone(), token_dir.clone());
        self.renew(manager, account, &token_dir);
        client
    }

    /// Renews `account`'s token at 80 % of its life, as the kubelet renews projected
    /// tokens; a failed renewal is retried every 10 s while the old token lasts.
    fn renew(&mut self, manager: Client, account: &str, token_dir: &Path) {
        let (account, file) = (
            account.to_owned(),
            token_dir.join(format!("{account}.token")),
        );
        self.renewals.push(Box::pin(async move {
            let mut next = Duration::from_secs(TOKEN_SECONDS as u64 * 8 / 10);
            loop {
                tokio::time::sleep(next).await;
                next = match issue(&manager, &account, &file).await {
                    Ok(()) => Duration::from_secs(TOKEN_SECONDS as u64 * 8 / 10),
                    Err(err) => {
                        tracing::warn!(%err, %account, "renewing the controller's token");
                        Duration::from_secs(10)
                    }
                };
            }
        }));
    }

    /// The renewals of every token handed out, to run while the controllers run.
    pub fn renewals(self) -> Vec<BoxFuture<'static, ()>> {
        self.renewals
    }
}

/// A client of `config` that sends the token in `file` (re-read every minute).
fn token_client(config: &kube::Config, file: &Path) -> Result<Client, String> {
    let mut config = config.clone();
    config.auth_info = kube::config::AuthInfo {
        token_file: Some(file.display().to_string()),
        ..Default::default()
    };
    Client::try_from(config).map_err(|e| e.to_string())
}

/// Makes sure `kube-system/<account>` exists and writes a fresh token for it to `file`.
async fn issue(manager: &Client, account: &str, file: &Path) -> Result<(), String> {
    let api: Api<ServiceAccount> = Api::namespaced(manager.clone(), NAMESPACE);
    let exists = api.get_opt(account).await.map_err(|e| e.to_string())?;
    if exists.is_none() {
        let sa = ServiceAccount {
            metadata: kube::api::ObjectMeta {
                name: Some(account.to_owned()),
                namespace: Some(NAMESPACE.to_owned()),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                return Err(format!(
                    "creating ServiceAccount {NAMESPACE}/{account}: {e}"
                ));
            }
        }
    }
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(TOKEN_SECONDS),
            ..Default::default()
        }),
        ..Default::default()
    };
    let answer = api
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .map_err(|e| format!("requesting a token for {NAMESPACE}/{account}: {e}"))?;
    let token = answer
        .status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| format!("the TokenRequest for {NAMESPACE}/{account} has no token"))?;
    crate::apiserver::pki::write(file, &token, true).map_err(|e| e.to_string())
}
