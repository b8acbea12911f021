//! Lists a GitHub repository's issues, with the user's own authorization, so that private
//! repositories the user can see are readable too.
//!
//! The host runs GitHub's OAuth flow and adds the user's token to requests to `api.github.com`;
//! the plugin never sees it.

use keyhole_sdk::oauth::OAuth;
use keyhole_sdk::{Plugin, Tool, ToolError, http};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

/// The arguments of `list_issues`.
#[derive(Deserialize, JsonSchema)]
struct ListIssues {
    /// The account that owns the repository: `rust-lang` in `rust-lang/rust`.
    #[schemars(pattern(r"^[A-Za-z0-9-]{1,39}$"))]
    owner: String,
    /// The repository's name: `rust` in `rust-lang/rust`.
    #[schemars(
        length(max = 100),
        pattern(r"^[A-Za-z0-9_.-]*[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
    )]
    repo: String,
    /// Which issues: `open` (the default), `closed` or `all`.
    #[serde(default = "open")]
    #[schemars(extend("enum" = ["open", "closed", "all"]))]
    state: String,
    /// How many issues to return, 1 to 50; 10 when left out.
    #[serde(default = "ten")]
    #[schemars(range(min = 1, max = 50))]
    per_page: u32,
}

fn open() -> String {
    "open".to_owned()
}

fn ten() -> u32 {
    10
}

impl Tool for ListIssues {
    const NAME: &'static str = "list_issues";
    const DESCRIPTION: &'static str = "The newest issues of a GitHub repository, with their number, \
        title, state, author and link. Pull requests are left out.";
    const REQUIRES_AUTHORIZATION: bool = true;
    type Output = Vec<Value>;

    fn run(self) -> Result<Vec<Value>, ToolError> {
        let (owner, repo) = (&self.owner, &self.repo);
        let response = http::get(&format!(
            "https://api.github.com/repos/{owner}/{repo}/issues"
        ))
        .header("Accept", "application/vnd.github+json")
        .header("X-GitHub-Api-Version", "2022-11-28")
        .header("User-Agent", "keyhole-github-plugin")
        .query(&[
            ("state", &self.state),
            ("per_page", &self.per_page.to_string()),
        ])
        .send()?;
        if response.status() == 404 {
            let message = format!("no repository `{owner}/{repo}` is visible to the user");
            return Err(ToolError::invalid_arguments(message));
        }

        let issues: Vec<Value> = response.success()?.json()?;
        Ok(issues.iter().filter_map(compact).collect())
    }
}

/// What the model needs of an issue; `None` for a pull request, which GitHub lists as an issue
/// with a `pull_request` field.
fn compact(issue: &Value) -> Option<Value> {
    issue.get("pull_request").is_none().then(|| {
        json!({
            "number": issue["number"],
            "title": issue["title"],
            "state": issue["state"],
            "user": issue["user"]["login"],
            "url": issue["html_url"],
        })
    })
}

fn plugin() -> Plugin {
    // `repo` is the only OAuth-app scope that lets a token read private repositories; GitHub has
    // no read-only one. Public repositories need no scope at all.
    let github = OAuth::new(
        "https://github.com/login/oauth/authorize",
        "https://github.com/login/oauth/access_token",
    )
    .scope("repo")
    .client_secret_in_body()
    .api_host("api.github.com");

    Plugin::new(
        "github",
        "GitHub",
        env!("CARGO_PKG_VERSION"),
        "Reads GitHub issues as the user.",
    )
    .oauth(github)
    .tool::<ListIssues>()
}

keyhole_sdk::export_plugin!(plugin);
