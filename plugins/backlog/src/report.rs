//! What happened to each item, and the deployment being reported.

/// The deployment the stage reports on work items.
pub struct Deployment {
    pub pipeline: String,
    pub environment: String,
    pub run_id: String,
    /// The deployed commit (full sha), when known.
    pub commit: String,
    /// What was deployed (an image reference or digest), when known.
    pub image: Option<String>,
    /// A link to the run (`gantry serve`'s run page).
    pub run_url: Option<String>,
}

impl Deployment {
    /// Written with every update and looked for before writing one: the same
    /// deployment (pipeline, environment, commit) is reported once, however
    /// often the run is re-run or resumed.
    pub fn marker(&self) -> String {
        let what = if self.commit.is_empty() {
            &self.run_id
        } else {
            &self.commit
        };
        format!(
            "gantry-deployment:{}/{}@{what}",
            self.pipeline, self.environment
        )
    }

    pub fn short_commit(&self) -> &str {
        &self.commit[..self.commit.len().min(12)]
    }
}

/// What the stage did to one item.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ItemReport {
    /// `AB#12` or `#12`.
    pub item: String,
    /// A comment/history entry (and links) was written in this run.
    pub updated: bool,
    /// Moved to the resolved state / closed in this run.
    pub transitioned: bool,
    /// An earlier run already reported this deployment on it.
    pub already: bool,
    /// What failed (the whole update, or only the transition).
    pub error: Option<String>,
}

/// An error that stops the whole stage (credentials, grants): no item can
/// be updated, so trying the others only repeats it.
pub struct Fatal(pub gantry_sdk::StageError);
