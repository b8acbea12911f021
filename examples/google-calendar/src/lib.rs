//! The user's upcoming Google Calendar events, read with the user's own authorization.
//!
//! The host runs Google's OAuth flow and adds the user's token to requests to
//! `www.googleapis.com`; the plugin never sees it.

use std::time::SystemTime;

use keyhole_sdk::oauth::OAuth;
use keyhole_sdk::{Plugin, Tool, ToolError, http};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

/// The arguments of `upcoming_events`.
#[derive(Deserialize, JsonSchema)]
struct UpcomingEvents {
    /// How many events to return, 1 to 50; 10 when left out.
    #[serde(default = "ten")]
    #[schemars(range(min = 1, max = 50))]
    max_results: u32,
    /// The calendar to read: `primary` (the user's main calendar, the default) or a calendar id
    /// such as `team@example.com`.
    #[serde(default = "primary")]
    calendar_id: String,
}

fn ten() -> u32 {
    10
}

fn primary() -> String {
    "primary".to_owned()
}

impl Tool for UpcomingEvents {
    const NAME: &'static str = "upcoming_events";
    const DESCRIPTION: &'static str = "The user's next events in Google Calendar, soonest first, \
        with their title, start, end, location and a link.";
    const REQUIRES_AUTHORIZATION: bool = true;
    type Output = Vec<Value>;

    fn run(self) -> Result<Vec<Value>, ToolError> {
        let calendar = percent_encode(&self.calendar_id);
        let url = format!("https://www.googleapis.com/calendar/v3/calendars/{calendar}/events");
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let response = http::get(&url)
            .query(&[
                ("timeMin", now.as_str()),
                ("singleEvents", "true"),
                ("orderBy", "startTime"),
                ("maxResults", &self.max_results.to_string()),
            ])
            .send()?;
        if response.status() == 404 {
            let message = format!("the user has no calendar `{}`", self.calendar_id);
            return Err(ToolError::invalid_arguments(message));
        }

        let events: Value = response.success()?.json()?;
        let items = events["items"].as_array().into_iter().flatten();
        Ok(items.map(compact).collect())
    }
}

/// What the model needs of an event. All-day events have a `date` where others have a `dateTime`.
fn compact(event: &Value) -> Value {
    let when = |field: &str| {
        let time = &event[field];
        time.get("dateTime").or(time.get("date")).cloned()
    };
    json!({
        "summary": event["summary"],
        "start": when("start"),
        "end": when("end"),
        "location": event["location"],
        "html_link": event["htmlLink"],
    })
}

/// Encodes all but RFC 3986's unreserved characters: calendar ids hold `@` and sometimes `#`.
fn percent_encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

fn plugin() -> Plugin {
    let google = OAuth::new(
        "https://accounts.google.com/o/oauth2/v2/auth",
        "https://oauth2.googleapis.com/token",
    )
    .revocation_url("https://oauth2.googleapis.com/revoke")
    .scope("https://www.googleapis.com/auth/calendar.readonly")
    .api_host("www.googleapis.com")
    // `offline` asks for a refresh token; Google sends one only at a user's first consent
    // unless `prompt=consent` asks again, as a user who reconnects needs.
    .param("access_type", "offline")
    .param("prompt", "consent");

    Plugin::new(
        "google-calendar",
        "Google Calendar",
        env!("CARGO_PKG_VERSION"),
        "Reads the user's upcoming Google Calendar events.",
    )
    .oauth(google)
    .tool::<UpcomingEvents>()
}

keyhole_sdk::export_plugin!(plugin);
