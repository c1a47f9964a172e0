//! What to change per port: pure functions from what Neutron showed (a port, its bindings) to
//! the [`Action`]s that bring it to the asked state, or a [`Refusal`] before anything is
//! written. No I/O here; `mod.rs` observes, plans every port, then writes.
//!
//! The sequences are Nova's (Rocky/Stein live migration with `binding-extended`):
//! `prepared` = pre-live-migration (an inactive binding on the destination), `active` =
//! post-live-migration (activate the destination, delete the source's), `rolled_back` =
//! rollback (delete the destination's inactive binding). On Queens (`host_id`) the one binding
//! moves by updating `binding:host_id`.

use super::api::{Agent, Api, Binding, Port};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// One write to a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `POST /ports/{id}/bindings {"binding": {"host"}}` (an INACTIVE binding).
    CreateBinding { host: String },
    /// `PUT /ports/{id}/bindings/{host}/activate`.
    ActivateBinding { host: String },
    /// `DELETE /ports/{id}/bindings/{host}`.
    DeleteBinding { host: String },
    /// `PUT /ports/{id} {"port": {"binding:host_id"}}` (Queens).
    SetHostId { host: String },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::CreateBinding { host } => write!(f, "create binding on {host}"),
            Action::ActivateBinding { host } => write!(f, "activate binding on {host}"),
            Action::DeleteBinding { host } => write!(f, "delete binding on {host}"),
            Action::SetHostId { host } => write!(f, "set binding:host_id to {host}"),
        }
    }
}

/// Why a port is not changed (nothing was written for any port).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("Neutron cannot bind port {port} on {host} (vif_type {vif_type}): is an L2 agent alive on {host} with a mapping for the network's physical network? Nothing was migrated.")]
    CannotBind {
        port: String,
        host: String,
        vif_type: String,
    },
    #[error("port {port} would be bound on {host} as vif_type {dest} but is {source_type} on {source_host}: the guest's XML keeps the source's interface, so the migration would break its network. Nothing was migrated.")]
    VifMismatch {
        port: String,
        host: String,
        dest: String,
        source_type: String,
        source_host: String,
    },
    #[error("port {port} is active on {host}: the guest runs there? not rolling back")]
    ActiveOnRollback { port: String, host: String },
    #[error("port {port} is bound as Open vSwitch with hybrid plug on {host} (the iptables_hybrid firewall): its qbr/qvb/qvo devices are made on the destination by Nova's os-vif, which numa-repin does not do. Nothing was migrated.")]
    HybridPlug { port: String, host: String },
    #[error("no alive L2 agent on {host} (agents there: {agents}): Neutron could not bind the guest's ports there. Nothing was migrated.")]
    NoL2Agent { host: String, agents: String },
}

/// A port and its bindings as Neutron showed them (`bindings` empty on Queens).
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub port: Port,
    pub bindings: Vec<Binding>,
}

impl Observed {
    fn on(&self, host: &str) -> Option<&Binding> {
        self.bindings.iter().find(|b| b.host == host)
    }
    pub fn active(&self) -> Option<&Binding> {
        self.bindings.iter().find(|b| b.is_active())
    }
}

/// A port's bindings as a result shows them: the active host and `host:STATUS` per binding.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PortState {
    pub host: String,
    pub bindings: Vec<String>,
}

pub fn state_of(o: &Observed) -> PortState {
    PortState {
        host: o.port.host_id.clone(),
        bindings: o
            .bindings
            .iter()
            .map(|b| format!("{}:{}", b.host, b.status))
            .collect(),
    }
}

/// The bindings after `actions`, as Neutron would leave them (for check mode and the diff).
pub fn apply(o: &Observed, actions: &[Action]) -> Observed {
    let mut n = o.clone();
    for a in actions {
        match a {
            Action::CreateBinding { host } => n.bindings.push(Binding {
                host: host.clone(),
                status: "INACTIVE".into(),
                ..Default::default()
            }),
            Action::ActivateBinding { host } => {
                for b in &mut n.bindings {
                    b.status = if &b.host == host {
                        "ACTIVE"
                    } else {
                        "INACTIVE"
                    }
                    .into();
                }
                n.port.host_id = host.clone();
            }
            Action::DeleteBinding { host } => n.bindings.retain(|b| &b.host != host),
            Action::SetHostId { host } => n.port.host_id = host.clone(),
        }
    }
    n
}

/// The destination binding's vif_type against the active one's: Nova keeps the source's
/// interface in the guest XML, so a different vif_type (ovs vs bridge) breaks the network.
/// Bindings Neutron did not make (`unbound`/`binding_failed`) are [`Refusal::CannotBind`].
pub fn check_dest_binding(o: &Observed, dest: &Binding) -> Result<(), Refusal> {
    if dest.failed() {
        return Err(Refusal::CannotBind {
            port: o.port.id.clone(),
            host: dest.host.clone(),
            vif_type: dest.vif_type.clone(),
        });
    }
    if dest.hybrid_plug() {
        return Err(Refusal::HybridPlug {
            port: o.port.id.clone(),
            host: dest.host.clone(),
        });
    }
    if let Some(src) = o.active().filter(|a| a.host != dest.host) {
        if !src.failed() && !src.vif_type.is_empty() && src.vif_type != dest.vif_type {
            return Err(Refusal::VifMismatch {
                port: o.port.id.clone(),
                host: dest.host.clone(),
                dest: dest.vif_type.clone(),
                source_type: src.vif_type.clone(),
                source_host: src.host.clone(),
            });
        }
    }
    Ok(())
}

/// `prepared`: an inactive binding on `host` (binding-extended); on Queens nothing to write
/// (the agent check is [`l2_agent_alive`], once per host).
pub fn prepared(api: Api, o: &Observed, host: &str) -> Result<Vec<Action>, Refusal> {
    if api == Api::HostId {
        return Ok(Vec::new());
    }
    match o.on(host) {
        Some(b) => {
            check_dest_binding(o, b)?;
            Ok(Vec::new())
        }
        None if o.port.host_id == host && o.bindings.is_empty() => Ok(Vec::new()),
        None => Ok(vec![Action::CreateBinding { host: host.into() }]),
    }
}

/// `active`: the binding on `host` active and the only one (binding-extended), or
/// `binding:host_id` = `host` (Queens).
pub fn active(api: Api, o: &Observed, host: &str) -> Result<Vec<Action>, Refusal> {
    if api == Api::HostId {
        return Ok(if o.port.host_id == host {
            Vec::new()
        } else {
            vec![Action::SetHostId { host: host.into() }]
        });
    }
    let mut out = Vec::new();
    match o.on(host) {
        None => {
            out.push(Action::CreateBinding { host: host.into() });
            out.push(Action::ActivateBinding { host: host.into() });
        }
        Some(b) if b.failed() => {
            return Err(Refusal::CannotBind {
                port: o.port.id.clone(),
                host: host.into(),
                vif_type: b.vif_type.clone(),
            })
        }
        Some(b) if !b.is_active() => out.push(Action::ActivateBinding { host: host.into() }),
        Some(_) => {}
    }
    // Every other binding goes, as Nova's post-live-migration deletes the source's; an unbound
    // port's host-less binding has no URL and is replaced by Neutron itself.
    for b in o
        .bindings
        .iter()
        .filter(|b| b.host != host && !b.host.is_empty())
    {
        out.push(Action::DeleteBinding {
            host: b.host.clone(),
        });
    }
    Ok(out)
}

/// `rolled_back`: the inactive binding on `host` deleted; an active one is refused.
pub fn rolled_back(api: Api, o: &Observed, host: &str) -> Result<Vec<Action>, Refusal> {
    if api == Api::HostId {
        return Ok(Vec::new());
    }
    match o.on(host) {
        None => Ok(Vec::new()),
        Some(b) if b.is_active() => Err(Refusal::ActiveOnRollback {
            port: o.port.id.clone(),
            host: host.into(),
        }),
        Some(_) => Ok(vec![Action::DeleteBinding { host: host.into() }]),
    }
}

/// The L2 agent types Neutron ships (ML2 mechanism drivers that bind through an agent).
pub const L2_AGENT_TYPES: [&str; 5] = [
    "Open vSwitch agent",
    "Linux bridge agent",
    "NIC Switch agent",
    "MacVTap agent",
    "OVN Controller agent",
];

/// Whether an L2 agent on `host` is alive and enabled; else the refusal lists what is there.
pub fn l2_agent_alive(agents: &[Agent], host: &str) -> Result<(), Refusal> {
    let ok = agents.iter().any(|a| {
        a.host == host
            && a.alive
            && a.admin_state_up
            && (L2_AGENT_TYPES.contains(&a.agent_type.as_str())
                || a.agent_type.to_ascii_lowercase().contains("l2"))
    });
    if ok {
        return Ok(());
    }
    let list: Vec<String> = agents
        .iter()
        .filter(|a| a.host == host)
        .map(|a| {
            format!(
                "{} ({})",
                a.agent_type,
                if a.alive { "alive" } else { "dead" }
            )
        })
        .collect();
    Err(Refusal::NoL2Agent {
        host: host.into(),
        agents: if list.is_empty() {
            "none".into()
        } else {
            list.join(", ")
        },
    })
}

/// A port bound elsewhere than where its guest runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    pub port_id: String,
    pub instance_uuid: String,
    pub bound_host: String,
    pub running_host: String,
    pub status: String,
    /// Moved where its guest runs by this run (`fix`, not in check mode).
    pub fixed: bool,
}

/// The ports of `guests` (uuid -> host it runs on) bound to another host.
pub fn mismatches(ports: &[Port], guests: &BTreeMap<String, String>) -> Vec<Mismatch> {
    let mut out: Vec<Mismatch> = ports
        .iter()
        .filter_map(|p| {
            let running = guests.get(&p.device_id)?;
            (p.host_id != *running).then(|| Mismatch {
                port_id: p.id.clone(),
                instance_uuid: p.device_id.clone(),
                bound_host: p.host_id.clone(),
                running_host: running.clone(),
                status: p.status.clone(),
                fixed: false,
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.instance_uuid, &a.port_id).cmp(&(&b.instance_uuid, &b.port_id)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn fixture() -> (Vec<Port>, Vec<Binding>) {
        let p: Value = serde_json::from_str(include_str!("fixtures/ports.json")).unwrap();
        let b: Value = serde_json::from_str(include_str!("fixtures/bindings.json")).unwrap();
        (
            serde_json::from_value(p["ports"].clone()).unwrap(),
            serde_json::from_value(b["bindings"].clone()).unwrap(),
        )
    }

    /// Port 0 of the fixture, active on cmp1, with the bindings given.
    fn obs(bindings: Vec<Binding>) -> Observed {
        Observed {
            port: fixture().0[0].clone(),
            bindings,
        }
    }

    fn b(host: &str, status: &str, vif: &str) -> Binding {
        Binding {
            host: host.into(),
            status: status.into(),
            vif_type: vif.into(),
            vnic_type: "normal".into(),
            ..Default::default()
        }
    }

    fn names(a: &[Action]) -> Vec<String> {
        a.iter().map(|x| x.to_string()).collect()
    }

    const BE: Api = Api::BindingExtended;

    #[test]
    fn prepared_creates_a_missing_destination_binding_once() {
        let o = obs(vec![b("cmp1", "ACTIVE", "ovs")]);
        assert_eq!(
            names(&prepared(BE, &o, "cmp2").unwrap()),
            ["create binding on cmp2"]
        );
        let (_, recorded) = fixture(); // cmp1 ACTIVE ovs, cmp2 INACTIVE ovs
        let o = obs(recorded);
        assert!(prepared(BE, &o, "cmp2").unwrap().is_empty());
        // applying the plan once reaches the state the second run finds unchanged
        let o = obs(vec![b("cmp1", "ACTIVE", "ovs")]);
        let once = apply(&o, &prepared(BE, &o, "cmp2").unwrap());
        assert_eq!(state_of(&once).bindings, ["cmp1:ACTIVE", "cmp2:INACTIVE"]);
        assert!(prepared(Api::HostId, &o, "cmp2").unwrap().is_empty());
    }

    #[test]
    fn prepared_refuses_a_failed_or_different_destination_binding() {
        let o = obs(vec![
            b("cmp1", "ACTIVE", "ovs"),
            b("cmp2", "INACTIVE", "binding_failed"),
        ]);
        let e = prepared(BE, &o, "cmp2").unwrap_err();
        assert!(matches!(e, Refusal::CannotBind { .. }));
        let m = e.to_string();
        assert!(m.contains("Neutron cannot bind port 3c2b"), "{m}");
        assert!(m.contains("on cmp2 (vif_type binding_failed)"), "{m}");
        assert!(m.ends_with("Nothing was migrated."), "{m}");
        let o = obs(vec![
            b("cmp1", "ACTIVE", "ovs"),
            b("cmp2", "INACTIVE", "bridge"),
        ]);
        let e = prepared(BE, &o, "cmp2").unwrap_err();
        assert!(matches!(e, Refusal::VifMismatch { .. }), "{e}");
        // a freshly created binding is checked the same way
        let fresh = b("cmp3", "INACTIVE", "unbound");
        assert!(matches!(
            check_dest_binding(&o, &fresh),
            Err(Refusal::CannotBind { .. })
        ));
        assert!(check_dest_binding(&o, &b("cmp3", "INACTIVE", "ovs")).is_ok());
    }

    #[test]
    fn active_activates_then_deletes_the_others() {
        let (_, recorded) = fixture();
        let o = obs(recorded);
        let plan = active(BE, &o, "cmp2").unwrap();
        assert_eq!(
            names(&plan),
            ["activate binding on cmp2", "delete binding on cmp1"]
        );
        let after = apply(&o, &plan);
        assert_eq!(state_of(&after).host, "cmp2");
        assert_eq!(state_of(&after).bindings, ["cmp2:ACTIVE"]);
        assert!(active(BE, &after, "cmp2").unwrap().is_empty());

        let o = obs(vec![b("cmp1", "ACTIVE", "ovs")]);
        assert_eq!(
            names(&active(BE, &o, "cmp2").unwrap()),
            [
                "create binding on cmp2",
                "activate binding on cmp2",
                "delete binding on cmp1"
            ]
        );
        // already active there, a leftover inactive binding elsewhere: only the delete
        let o = obs(vec![
            b("cmp2", "ACTIVE", "ovs"),
            b("cmp3", "INACTIVE", "ovs"),
        ]);
        assert_eq!(
            names(&active(BE, &o, "cmp2").unwrap()),
            ["delete binding on cmp3"]
        );
        let o = obs(vec![
            b("cmp1", "ACTIVE", "ovs"),
            b("cmp2", "INACTIVE", "binding_failed"),
        ]);
        assert!(active(BE, &o, "cmp2").is_err());
    }

    #[test]
    fn active_on_queens_sets_the_host_id() {
        let o = obs(vec![]);
        assert_eq!(
            names(&active(Api::HostId, &o, "cmp2").unwrap()),
            ["set binding:host_id to cmp2"]
        );
        assert!(active(Api::HostId, &o, "cmp1").unwrap().is_empty());
        let after = apply(&o, &active(Api::HostId, &o, "cmp2").unwrap());
        assert_eq!(after.port.host_id, "cmp2");
    }

    #[test]
    fn rolled_back_deletes_only_an_inactive_binding() {
        let (_, recorded) = fixture();
        let o = obs(recorded);
        assert_eq!(
            names(&rolled_back(BE, &o, "cmp2").unwrap()),
            ["delete binding on cmp2"]
        );
        let e = rolled_back(BE, &o, "cmp1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "port 3c2b7e9a-1c55-4a0e-9a36-5d1f0f1b2a01 is active on cmp1: the guest runs there? not rolling back"
        );
        assert!(rolled_back(BE, &o, "cmp9").unwrap().is_empty());
        assert!(rolled_back(Api::HostId, &o, "cmp2").unwrap().is_empty());
    }

    #[test]
    fn l2_agents() {
        let a: Value = serde_json::from_str(include_str!("fixtures/agents.json")).unwrap();
        let agents: Vec<Agent> = serde_json::from_value(a["agents"].clone()).unwrap();
        assert!(l2_agent_alive(&agents, "cmp2").is_ok());
        let e = l2_agent_alive(&agents, "cmp3").unwrap_err().to_string();
        assert!(
            e.contains("no alive L2 agent on cmp3 (agents there: Open vSwitch agent (dead), Metadata agent (alive))"),
            "{e}"
        );
        assert!(l2_agent_alive(&[], "cmp4")
            .unwrap_err()
            .to_string()
            .contains("agents there: none"));
    }

    #[test]
    fn audit_finds_ports_bound_elsewhere() {
        let (ports, _) = fixture();
        let mut guests = BTreeMap::new();
        guests.insert(ports[0].device_id.clone(), "cmp1".to_string());
        // port 1 is unbound: a running guest's port bound nowhere is a mismatch too
        let m = mismatches(&ports, &guests);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].port_id, ports[1].id);
        guests.insert(ports[0].device_id.clone(), "cmp2".to_string());
        guests.insert("00000000-0000-4000-8000-00000000ffff".into(), "cmp2".into());
        let m = mismatches(&ports, &guests);
        assert_eq!(m.len(), 2); // no port of the other guest
        assert_eq!(m[0].bound_host, "cmp1");
        assert_eq!(m[0].running_host, "cmp2");
        assert_eq!(m[1].bound_host, "");
    }
}
