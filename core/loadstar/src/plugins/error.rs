//! The plugin host's typed errors.

/// What can go wrong loading or calling a plugin. None of these ever panics the host: each is
/// reported to the caller and reflected in the plugin's [`super::PluginHealth`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PluginError {
    /// The wasm bytes are not a valid component, or do not fit the world's contract.
    #[error("plugin `{plugin}`: cannot compile: {message}")]
    Compile { plugin: String, message: String },
    /// The component imports something the host does not provide, or its start failed.
    #[error("plugin `{plugin}`: cannot instantiate: {message}")]
    Instantiate { plugin: String, message: String },
    /// The plugin trapped (a panic, an out-of-bounds access, the memory cap, unreachable...).
    #[error("plugin `{plugin}` trapped: {message}")]
    Trap { plugin: String, message: String },
    /// The call ran past its deadline (real time) and was cut off.
    #[error("plugin `{plugin}` missed its {deadline_ms} ms deadline and was cut off")]
    Timeout { plugin: String, deadline_ms: u64 },
    /// The plugin returned an error of its own.
    #[error("plugin `{plugin}` returned an error: {message}")]
    Plugin { plugin: String, message: String },
    /// The plugin returned something the host refuses (too large, not finite...).
    #[error("plugin `{plugin}` returned an invalid result: {message}")]
    InvalidOutput { plugin: String, message: String },
    /// The plugin failed earlier and waits for its restart.
    #[error("plugin `{plugin}` is failed and restarts in {retry_in_ms} ms (last: {last_error})")]
    BackingOff {
        plugin: String,
        retry_in_ms: u64,
        last_error: String,
    },
    /// The plugin's specification is wrong (a bad grant, a zero deadline...).
    #[error("plugin `{plugin}`: invalid configuration: {message}")]
    Config { plugin: String, message: String },
    /// The component file cannot be read.
    #[error("plugin `{plugin}`: cannot read the component {path}: {message}")]
    Read {
        plugin: String,
        path: String,
        message: String,
    },
    /// The precompiled-artifact cache or the engine failed.
    #[error("plugin host: {0}")]
    Host(String),
}

impl PluginError {
    /// Whether this error means the instance can no longer be trusted (it is dropped and
    /// re-instantiated after a backoff).
    pub fn poisons_instance(&self) -> bool {
        matches!(
            self,
            PluginError::Trap { .. }
                | PluginError::Timeout { .. }
                | PluginError::Instantiate { .. }
        )
    }
}
