//! What a reload keeps of the running configuration (its names' numbers
//! and its queues' places), and the file's queues put in those places.

use super::*;

/// What a reload keeps of the running configuration: the numbers of its
/// names and the places of its queues.
#[derive(Clone, Debug, Default)]
pub struct Seed {
    /// The running configuration's catalog.
    pub catalog: Catalog,
    /// Its queues in order: (name, tenant name), retired ones included.
    pub queues: Vec<(String, String)>,
}

impl Config {
    /// The seed a reload of this configuration parses the new file with.
    pub fn seed(&self) -> Seed {
        Seed {
            catalog: self.catalog.clone(),
            queues: self
                .queues
                .iter()
                .map(|q| {
                    let tenant = self
                        .tenants
                        .get(q.tenant.index())
                        .cloned()
                        .unwrap_or_default();
                    (q.routing.name.clone(), tenant)
                })
                .collect(),
        }
    }
}

/// Puts the file's queues in the running order: each running queue at its
/// place (a bare one, retired, where the file no longer has it), then the
/// file's new ones in file order. Returns each one's place in the file
/// (`None`: retired).
pub(crate) fn order_queues(
    queues: &mut Vec<RawQueue>,
    running: &[(String, String)],
) -> Vec<Option<usize>> {
    if running.is_empty() {
        return (0..queues.len()).map(Some).collect();
    }
    let mut file: Vec<Option<RawQueue>> = std::mem::take(queues).into_iter().map(Some).collect();
    let mut places = Vec::with_capacity(file.len().max(running.len()));
    for (name, tenant) in running {
        match file
            .iter()
            .position(|q| q.as_ref().is_some_and(|q| &q.name == name))
        {
            Some(at) => {
                queues.push(file[at].take().expect("found above"));
                places.push(Some(at));
            }
            None => {
                let bare = format!("name = {name:?}\ntenant = {tenant:?}\n");
                if let Ok(q) = toml::from_str::<RawQueue>(&bare) {
                    queues.push(q);
                    places.push(None);
                }
            }
        }
    }
    for (at, q) in file.into_iter().enumerate() {
        if let Some(q) = q {
            queues.push(q);
            places.push(Some(at));
        }
    }
    places
}
