//! Exit codes: what kind of failure ended a command, for scripts.
//!
//! | code | meaning |
//! |---:|---|
//! | 0 | success |
//! | 1 | internal error (a bug, or an operating-system failure such as a full disk) |
//! | 2 | usage: bad flags, settings, or a busy output folder |
//! | 3 | bad input data: a dataset, prediction, score-function or temperature file |
//! | 4 | bad model: model files, their config or tokenizer, or fetching them |

/// A mistake in how the command was called (flags, settings), reported with exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Returns early with a [`UsageError`].
macro_rules! usage_bail {
    ($($arg:tt)*) => {
        return Err($crate::exit::UsageError(format!($($arg)*)).into())
    };
}

/// Returns early with a [`UsageError`] unless the condition holds.
macro_rules! usage_ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            $crate::exit::usage_bail!($($arg)*);
        }
    };
}

pub(crate) use {usage_bail, usage_ensure};

/// Usage errors.
pub const USAGE: u8 = 2;
/// Bad input data.
pub const DATA: u8 = 3;
/// Bad model files.
pub const MODEL: u8 = 4;
/// Everything else.
pub const INTERNAL: u8 = 1;

/// The exit code of `error`: the first cause in its chain that says what went wrong
/// decides (a generation that failed inside a prediction run is a model error, not a
/// data error).
pub fn code(error: &anyhow::Error) -> u8 {
    use cake_longbench::PredictError;
    for cause in error.chain() {
        let kind = if cause.is::<UsageError>() {
            Some(USAGE)
        } else if let Some(e) = cause.downcast_ref::<cake_core::ConfigError>() {
            Some(match e {
                cake_core::ConfigError::ScoreFunction { .. }
                | cake_core::ConfigError::TauFile { .. }
                | cake_core::ConfigError::Io { .. }
                | cake_core::ConfigError::LayerCountMismatch { .. } => DATA,
                _ => USAGE,
            })
        } else if let Some(cake_models::LoadError::MemoryLimit(_)) = cause.downcast_ref() {
            Some(USAGE)
        } else if cause.is::<cake_models::LoadError>()
            || cause.is::<cake_models::gguf::GgufError>()
            || cause.is::<cake_models::config::ConfigError>()
            || cause.is::<cake_models::weights::WeightError>()
            || cause.is::<cake_models::fetch::FetchError>()
            || cause.is::<cake_models::tokenizer::TokenizerError>()
        {
            Some(MODEL)
        } else if let Some(cake_models::generate::GenerateError::PromptTooLong { .. }) =
            cause.downcast_ref()
        {
            Some(USAGE)
        } else if let Some(e) = cause.downcast_ref::<PredictError>() {
            match e {
                PredictError::Generation { .. } | PredictError::Io { .. } => None,
                PredictError::MaxLength(_) => Some(USAGE),
                _ => Some(DATA),
            }
        } else if cause.is::<cake_longbench::DataError>()
            || cause.is::<cake_longbench::EvalError>()
            || cause.is::<cake_longbench::RegistryError>()
            || cause.is::<cake_longbench::PromptError>()
            || cause.is::<cake_longbench::NeedleError>()
            || cause.is::<cake_longbench::MetricError>()
        {
            Some(DATA)
        } else {
            None
        };
        if let Some(kind) = kind {
            return kind;
        }
    }
    INTERNAL
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn the_first_telling_cause_decides() {
        let usage: anyhow::Error = UsageError("give --prompt".into()).into();
        assert_eq!(code(&usage.context("generate")), USAGE);
        let model = cake_models::LoadError::NotAModel("x.bin".into());
        assert_eq!(code(&anyhow::Error::from(model).context("loading")), MODEL);
        let data = cake_longbench::PredictError::MaxLength(1);
        assert_eq!(code(&data.into()), USAGE);
        let io = std::io::Error::other("disk full");
        assert_eq!(
            code(&Err::<(), _>(io).context("writing").unwrap_err()),
            INTERNAL
        );
        let bad = cake_core::ConfigError::WindowZero;
        assert_eq!(code(&bad.into()), USAGE);
    }
}
