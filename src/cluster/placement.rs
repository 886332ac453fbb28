//! Where a new room goes (pure, unit-tested): the node registry as Redis holds it, each node's
//! load, and the choice of the least loaded serving node, the local one when it is close.
//! Draining and full nodes never get a new room.

use std::collections::HashMap;

/// A node is "close enough" to the least loaded one to keep a new room local within this much
/// load (0.1 = 10 % of its capacity or CPU).
const LOCAL_MARGIN: f64 = 0.1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Serving,
    Draining,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Serving => "serving",
            NodeState::Draining => "draining",
        }
    }
}

/// One node of the registry (a Redis hash `<prefix>node:<id>` with a lease).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    pub id: String,
    pub state: NodeState,
    pub advertise_url: String,
    pub internal_url: String,
    pub participants: u32,
    pub rooms: u32,
    pub capacity: u32,
    /// Share of the media workers' time spent busy over the last second, 0..1.
    pub cpu: f64,
    /// Unix milliseconds of the last refresh.
    pub updated_ms: i64,
}

impl NodeInfo {
    /// The hash fields written to Redis.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("state", self.state.as_str().into()),
            ("advertise_url", self.advertise_url.clone()),
            ("internal_url", self.internal_url.clone()),
            ("participants", self.participants.to_string()),
            ("rooms", self.rooms.to_string()),
            ("capacity", self.capacity.to_string()),
            ("cpu", format!("{:.3}", self.cpu)),
            ("updated_ms", self.updated_ms.to_string()),
        ]
    }

    /// Reads a node back from its hash; None when a field is missing or malformed.
    pub fn from_fields(id: &str, f: &HashMap<String, String>) -> Option<NodeInfo> {
        let num = |k: &str| f.get(k)?.parse::<u32>().ok();
        Some(NodeInfo {
            id: id.to_owned(),
            state: match f.get("state")?.as_str() {
                "serving" => NodeState::Serving,
                "draining" => NodeState::Draining,
                _ => return None,
            },
            advertise_url: f.get("advertise_url")?.clone(),
            internal_url: f.get("internal_url")?.clone(),
            participants: num("participants")?,
            rooms: num("rooms")?,
            capacity: num("capacity")?.max(1),
            cpu: f.get("cpu")?.parse().ok()?,
            updated_ms: f.get("updated_ms")?.parse().ok()?,
        })
    }

    /// 0 idle … 1 full: the larger of participants over capacity and CPU.
    pub fn load(&self) -> f64 {
        (f64::from(self.participants) / f64::from(self.capacity)).max(self.cpu)
    }

    /// Takes new rooms: serving and not full.
    pub fn open(&self) -> bool {
        self.state == NodeState::Serving && self.participants < self.capacity
    }
}

/// The node a new room goes to: the least loaded open node, but the local one when its load is
/// within [`LOCAL_MARGIN`] of that (no redirect for little gain). None when no node is open.
pub fn place<'a>(nodes: &'a [NodeInfo], local: &str) -> Option<&'a NodeInfo> {
    let best = nodes
        .iter()
        .filter(|n| n.open())
        .min_by(|a, b| a.load().total_cmp(&b.load()).then(a.id.cmp(&b.id)))?;
    match nodes.iter().find(|n| n.id == local && n.open()) {
        Some(me) if me.load() <= best.load() + LOCAL_MARGIN => Some(me),
        _ => Some(best),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, participants: u32, cpu: f64) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            state: NodeState::Serving,
            advertise_url: format!("http://{id}"),
            internal_url: format!("http://{id}:7880"),
            participants,
            rooms: participants / 2,
            capacity: 100,
            cpu,
            updated_ms: 1,
        }
    }

    #[test]
    fn a_new_room_goes_to_the_least_loaded_open_node_or_stays_local_when_close() {
        let nodes = vec![node("a", 50, 0.1), node("b", 10, 0.05), node("c", 55, 0.9)];
        assert_eq!(place(&nodes, "a").unwrap().id, "b");
        assert_eq!(place(&nodes, "c").unwrap().id, "b");
        // Within 10 %: no redirect.
        let nodes = vec![node("a", 18, 0.0), node("b", 10, 0.0)];
        assert_eq!(place(&nodes, "a").unwrap().id, "a");
        // CPU counts as load.
        let nodes = vec![node("a", 0, 0.8), node("b", 30, 0.1)];
        assert_eq!(place(&nodes, "a").unwrap().id, "b");
    }

    #[test]
    fn draining_and_full_nodes_get_no_new_room() {
        let mut draining = node("a", 0, 0.0);
        draining.state = NodeState::Draining;
        let full = node("b", 100, 0.0);
        assert_eq!(place(&[draining.clone(), full.clone()], "a"), None);
        let nodes = vec![draining, full, node("c", 90, 0.5)];
        assert_eq!(place(&nodes, "a").unwrap().id, "c");
    }

    #[test]
    fn registry_fields_round_trip() {
        let n = node("pc2", 7, 0.25);
        let f: HashMap<String, String> = n
            .fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(NodeInfo::from_fields("pc2", &f), Some(n));
        let mut broken = f.clone();
        broken.remove("state");
        assert_eq!(NodeInfo::from_fields("pc2", &broken), None);
    }
}
