//! Current weather for a city, from Open-Meteo's free public API (no key needed).

use keyhole_sdk::{Plugin, Setting, Tool, ToolError, http, setting};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

/// The arguments of `current_weather`.
#[derive(Deserialize, JsonSchema)]
struct CurrentWeather {
    /// The city's name, optionally with its country: "Berlin" or "Paris, France".
    city: String,
}

#[derive(Deserialize)]
struct Place {
    name: String,
    country: Option<String>,
    latitude: f64,
    longitude: f64,
}

impl Tool for CurrentWeather {
    const NAME: &'static str = "current_weather";
    const DESCRIPTION: &'static str = "Current temperature, wind and weather code for a city.";
    type Output = Value;

    fn run(self) -> Result<Value, ToolError> {
        let place = geocode(&self.city)?;
        let (temperature, wind) = match setting("units").as_deref() {
            Some("imperial") => ("fahrenheit", "mph"),
            _ => ("celsius", "kmh"),
        };
        let forecast: Value = http::get("https://api.open-meteo.com/v1/forecast")
            .query(&[
                ("latitude", place.latitude.to_string().as_str()),
                ("longitude", &place.longitude.to_string()),
                ("current", "temperature_2m,wind_speed_10m,weather_code"),
                ("temperature_unit", temperature),
                ("wind_speed_unit", wind),
            ])
            .send()?
            .success()?
            .json()?;

        Ok(json!({
            "place": place.name,
            "country": place.country,
            "current": forecast["current"],
            "units": forecast["current_units"],
        }))
    }
}

/// Finds the city's coordinates with Open-Meteo's geocoding API.
fn geocode(city: &str) -> Result<Place, ToolError> {
    #[derive(Deserialize)]
    struct Found {
        #[serde(default)]
        results: Vec<Place>,
    }

    let name = city.split(',').next().unwrap_or(city).trim();
    let found: Found = http::get("https://geocoding-api.open-meteo.com/v1/search")
        .query(&[("name", name), ("count", "1")])
        .send()?
        .success()?
        .json()?;
    found.results.into_iter().next().ok_or_else(|| {
        ToolError::invalid_arguments(format!(
            "no place named `{city}` was found; try a larger city"
        ))
    })
}

fn plugin() -> Plugin {
    Plugin::new(
        "weather",
        "Weather",
        env!("CARGO_PKG_VERSION"),
        "Current weather from Open-Meteo.",
    )
    .host("api.open-meteo.com")
    .host("geocoding-api.open-meteo.com")
    .setting(Setting::optional(
        "units",
        "`metric` (default) or `imperial`.",
    ))
    .tool::<CurrentWeather>()
}

keyhole_sdk::export_plugin!(plugin);
