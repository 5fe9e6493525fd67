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
//! - Away teams are the fleet's: any signed-in member assigns anyone to one, and releases
//!   them (they grant no reading of logs, which follow ships and ranks only).
//!
//! A move writes the member's ship only, at commit, and only if their rank and ship are
//! still those the rule saw.
//!
//! Every rule is checked against the rows as they are when the request comes, with the
//! signed-in member of the request's session (no one signed in may change no one), and
//! decided again at commit: a rule says what it let the member act as ([`Authority`]), and
//! the write commits in a [`Transaction`] that requires it still (the captain still the
//! captain of that ship, the member still on it), so that a demotion, a move or a delete
//! committed meanwhile refuses the write instead of being acted past.

use crate::error::{AppError, AppResult};
use crate::models::Crewmember;
use crate::session::Session;
use remodel::model::{Id, Transaction};
use remodel::{Database, Model};

/// Why a write is refused at commit when the signed-in member is no longer the captain the
/// rule saw.
pub const YOU_CHANGED: &str = "you are no longer the captain of that ship";

/// Why a write is refused at commit when the member moved (or, for a move, became a
/// captain) since the request was checked: who may change them changed with it.
pub const MEMBER_CHANGED: &str = "the member's ship or rank changed since this request was checked";

/// What a rule let the signed-in member act as, to be decided again at commit
/// ([`Authority::require`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Authority {
    /// On their own row.
    Own,
    /// As the captain of this ship.
    Captain(Id),
}

impl Authority {
    /// Requires, in `tx`, what the rule was decided on: as a captain, that `me` is still the
    /// captain of that ship and `member` (if the write is about one) still on the ship they
    /// were on. Acting on oneself needs nothing more (the write itself requires the row).
    pub fn require(
        &self,
        tx: &mut Transaction,
        me: &Crewmember,
        member: Option<&Crewmember>,
    ) -> AppResult<()> {
        let Authority::Captain(ship) = self else {
            return Ok(());
        };
        let ship = ship.clone();
        tx.require(me, YOU_CHANGED, move |now: &Crewmember| {
            captain_of(now, Some(&ship))
        })?;
        if let Some(member) = member {
            let seen = member.starship_id.clone();
            tx.require(member, MEMBER_CHANGED, move |now: &Crewmember| {
                now.starship_id == seen
            })?;
        }
        Ok(())
    }
}

/// Commits a transaction of checked writes: a rule that no longer holds for the signed-in
/// member is a 403, anything else that changed meanwhile a 409 saying what (a row deleted
/// meanwhile is a 404).
pub async fn commit(tx: Transaction) -> AppResult<()> {
    match tx.commit().await {
        Ok(_) => Ok(()),
        Err(remodel::Error::Precondition(why)) if why == YOU_CHANGED => Err(AppError::Forbidden(
            format!("Not saved: {why}. Open the page again to see what you may do now."),
        )),
        Err(remodel::Error::Precondition(why)) => Err(AppError::Conflict(format!(
            "Not saved: {why}. Open the page again to see what is there now."
        ))),
        Err(e) => Err(e.into()),
    }
}

/// The signed-in member, or a 403 saying what to do.
pub async fn signed_in(db: &Database, session: &Session, to: &str) -> AppResult<Crewmember> {
    let me = match session.member.as_deref() {
        // A signed cookie names a member; one deleted since is no one. A failing store is
        // a 500, not "sign in".
        Some(id) => match Crewmember::get(db, id).await {
            Ok(me) => me,
            Err(remodel::Error::InvalidKey { .. }) => None,
            Err(e) => return Err(e.into()),
        },
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
pub fn may_add_to(me: &Crewmember, ship: Option<&Id>) -> AppResult<Authority> {
    match ship.filter(|s| captain_of(me, Some(s))) {
        Some(ship) => Ok(Authority::Captain(ship.clone())),
        None => Err(refused("the ship's captain adds to its crew")),
    }
}

/// As the captain of `member`'s ship, when `me` is.
fn as_captain_of(me: &Crewmember, member: &Crewmember) -> Option<Authority> {
    let ship = member.starship_id.as_ref()?;
    captain_of(me, Some(ship)).then(|| Authority::Captain(ship.clone()))
}

/// `me` may edit `member` (and change their rank, if `rank_changes`).
pub fn may_edit(me: &Crewmember, member: &Crewmember, rank_changes: bool) -> AppResult<Authority> {
    match (as_captain_of(me, member), me.id == member.id, rank_changes) {
        (Some(captain), _, _) => Ok(captain),
        (None, true, false) => Ok(Authority::Own),
        (None, true, true) => Err(refused("a member's captain changes their rank")),
        (None, false, _) => Err(refused("the member and their captain edit a member")),
    }
}

/// `me` may move `member` to the ship `to`. A captain is never moved (on another ship they
/// would be its captain too, and read its crew's logs): a captain leaves their ship first
/// (and stays without one), or is demoted by their captain.
/// (A move also requires, at commit, the member's ship and rank as the rule saw them: see
/// the member routes.)
pub fn may_move(me: &Crewmember, member: &Crewmember, to: Option<&Id>) -> AppResult<Authority> {
    if member.rank.eq_ignore_ascii_case("captain") {
        return Err(refused("members who are not captains move between ships"));
    }
    let allowed = match &member.starship_id {
        Some(_) => as_captain_of(me, member),
        None if me.id == member.id => Some(Authority::Own),
        None => to
            .filter(|to| captain_of(me, Some(to)))
            .map(|to| Authority::Captain(to.clone())),
    };
    allowed.ok_or_else(|| refused("a member's captain moves them to another ship"))
}

/// `me` may take `member` off their ship, or delete them.
pub fn may_release(me: &Crewmember, member: &Crewmember) -> AppResult<Authority> {
    match (me.id == member.id, as_captain_of(me, member)) {
        (true, _) => Ok(Authority::Own),
        (false, Some(captain)) => Ok(captain),
        (false, None) => Err(refused("the member and their captain do this")),
    }
}
