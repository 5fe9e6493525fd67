//! Who may change whom: the write rules of the member forms (reading a personal log is ruled
//! in [`crate::publications::may_use_log`], which these rules keep sound: whoever could make
//! themselves a captain, or move a member onto their own ship, could read that member's log).
//!
//! - A ship's **captain** is a member of its crew whose rank is `captain`.
//! - Adding a member to a ship's crew: that ship's captain.
//! - Editing a member: the member themself or their captain; changing a **rank**: their
//!   captain only (no one promotes themself).
//! - Moving a member to another ship, taking them off their ship, deleting them: their
//!   captain; a member without a ship moves themself (or a captain takes them on), and a
//!   member may leave their ship or delete themself. A captain is never moved (on another
//!   ship they would be its captain, and read its crew's logs).
//!
//! A move writes the member's ship only, at commit, and only if their rank and ship are
//! still those the rule saw.
//!
//! Every rule is checked against the rows as they are when the request comes, with the
//! signed-in member of the request's session; no one signed in may change no one.

use crate::error::{AppError, AppResult};
use crate::models::Crewmember;
use crate::session::Session;
use remodel::model::Id;
use remodel::{Database, Model};

/// The signed-in member, or a 403 saying what to do.
pub async fn signed_in(db: &Database, session: &Session, to: &str) -> AppResult<Crewmember> {
    let me = match session.member.as_deref() {
        Some(id) => Crewmember::get(db, id).await.ok().flatten(),
        None => None,
    };
    me.ok_or_else(|| AppError::Forbidden(format!("Sign in to {to}.")))
}

/// Whether `me` is the captain of `ship`.
pub fn captain_of(me: &Crewmember, ship: Option<&Id>) -> bool {
    me.rank.eq_ignore_ascii_case("captain") && ship.is_some() && me.starship_id.as_ref() == ship
}

fn refused(what: &str) -> AppError {
    AppError::Forbidden(format!("Only {what}."))
}

/// `me` may add members to `ship`'s crew.
pub fn may_add_to(me: &Crewmember, ship: Option<&Id>) -> AppResult<()> {
    match captain_of(me, ship) {
        true => Ok(()),
        false => Err(refused("the ship's captain adds to its crew")),
    }
}

/// `me` may edit `member` (and change their rank, if `rank_changes`).
pub fn may_edit(me: &Crewmember, member: &Crewmember, rank_changes: bool) -> AppResult<()> {
    let captain = captain_of(me, member.starship_id.as_ref());
    match (captain, me.id == member.id, rank_changes) {
        (true, _, _) | (false, true, false) => Ok(()),
        (false, true, true) => Err(refused("a member's captain changes their rank")),
        (false, false, _) => Err(refused("the member and their captain edit a member")),
    }
}

/// `me` may move `member` to the ship `to`. A captain is never moved (on another ship they
/// would be its captain too, and read its crew's logs): a captain leaves their ship first
/// (and stays without one), or is demoted by their captain.
pub fn may_move(me: &Crewmember, member: &Crewmember, to: Option<&Id>) -> AppResult<()> {
    if member.rank.eq_ignore_ascii_case("captain") {
        return Err(refused("members who are not captains move between ships"));
    }
    let allowed = match &member.starship_id {
        Some(ship) => captain_of(me, Some(ship)),
        None => me.id == member.id || captain_of(me, to),
    };
    match allowed {
        true => Ok(()),
        false => Err(refused("a member's captain moves them to another ship")),
    }
}

/// `me` may take `member` off their ship, or delete them.
pub fn may_release(me: &Crewmember, member: &Crewmember) -> AppResult<()> {
    match me.id == member.id || captain_of(me, member.starship_id.as_ref()) {
        true => Ok(()),
        false => Err(refused("the member and their captain do this")),
    }
}
