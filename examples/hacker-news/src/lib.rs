//! The top stories on Hacker News, from its public Firebase API (no key needed).

use keyhole_sdk::{Plugin, Tool, ToolError, http};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

/// The arguments of `top_stories`.
#[derive(Deserialize, JsonSchema)]
struct TopStories {
    /// How many stories to return, 1 to 20.
    #[schemars(range(min = 1, max = 20))]
    count: usize,
}

impl Tool for TopStories {
    const NAME: &'static str = "top_stories";
    const DESCRIPTION: &'static str =
        "The current top stories on Hacker News, with titles and links.";
    type Output = Vec<Value>;

    fn run(self) -> Result<Vec<Value>, ToolError> {
        let base = "https://hacker-news.firebaseio.com/v0";
        let ids: Vec<u64> = http::get(&format!("{base}/topstories.json"))
            .send()?
            .success()?
            .json()?;
        ids.iter()
            .take(self.count)
            .map(|id| {
                http::get(&format!("{base}/item/{id}.json"))
                    .send()?
                    .success()?
                    .json()
            })
            .collect()
    }
}

fn plugin() -> Plugin {
    Plugin::new(
        "hacker-news",
        "Hacker News",
        env!("CARGO_PKG_VERSION"),
        "Reads Hacker News.",
    )
    .host("hacker-news.firebaseio.com")
    .tool::<TopStories>()
}

keyhole_sdk::export_plugin!(plugin);
