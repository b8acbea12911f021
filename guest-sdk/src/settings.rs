use crate::ToolError;
use crate::bindings::keyhole::plugin::host;

/// The value the admin set for one of the plugin's declared settings, if any.
///
/// ```no_run
/// let units = keyhole_sdk::setting("units").unwrap_or_else(|| "metric".to_owned());
/// ```
pub fn setting(name: &str) -> Option<String> {
    host::get_setting(name)
}

/// The value of a setting the call cannot do without.
///
/// The host already refuses calls while a setting declared `required` is unset; this is for
/// settings a single tool needs.
///
/// ```no_run
/// # fn run() -> Result<(), keyhole_sdk::ToolError> {
/// let workspace = keyhole_sdk::required_setting("workspace")?;
/// # Ok(()) }
/// ```
pub fn required_setting(name: &str) -> Result<String, ToolError> {
    setting(name).ok_or_else(|| {
        ToolError::other(format!(
            "the setting `{name}` is not set; ask an admin to set it"
        ))
    })
}
