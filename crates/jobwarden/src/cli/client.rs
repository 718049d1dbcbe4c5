//! The HTTP client behind every command but `run`, `demo`, `manifest` and `config check`.

use super::*;

/// A small HTTP client for the daemon.
pub struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Client {
    /// A client for `server`; reads `$JOBWARDEN_TOKEN`.
    pub fn new(server: &ServerArgs) -> Result<Self, Failure> {
        let base = server.server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(fail(
                2,
                format!("--server {base:?}: must be an http:// or https:// URL"),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| fail(1, format!("HTTP client: {e}")))?;
        Ok(Client {
            base,
            http,
            token: std::env::var("JOBWARDEN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
        })
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<T, Failure> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.map_err(|e| {
            fail(
                1,
                format!(
                    "cannot reach jobwarden at {} ({e}); is `jobwarden run` running? (--server / JOBWARDEN_SERVER)",
                    self.base
                ),
            )
        })?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| fail(1, format!("{what}: reading response: {e}")))?;
        if !status.is_success() {
            let msg = serde_json::from_slice::<crate::api_types::ErrorBody>(&body)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_owned());
            return Err(fail(1, format!("{what}: {msg} (HTTP {})", status.as_u16())));
        }
        serde_json::from_slice(&body)
            .map_err(|e| fail(1, format!("{what}: unexpected response: {e}")))
    }

    /// GET `path`.
    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        self.send(self.http.get(format!("{}{path}", self.base)), path)
            .await
    }

    /// POST `body` to `path`.
    pub async fn post<T: serde::de::DeserializeOwned, B: serde::Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, Failure> {
        self.send(
            self.http.post(format!("{}{path}", self.base)).json(body),
            path,
        )
        .await
    }
}

pub(super) fn print_json<T: serde::Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("jobwarden: {e}"),
    }
}

/// `path` with the query `q` (`key=value` pairs), if any.
pub(super) fn with_query(path: &str, q: &[String]) -> String {
    if q.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", q.join("&"))
    }
}
