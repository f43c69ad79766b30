//! What the native core remembers of each user: `domain/state.py`'s `PairState`,
//! `SafetyFacts` and `UserState`, with the same meanings, and the same packed bytes
//! (`pack_user`/`unpack_user`), so that a changelog written by one core is read by the other.

use std::collections::BTreeSet;
use std::rc::Rc;

pub type Id = Rc<str>;

pub const APPS: [&str; 3] = ["facebook", "instagram", "whatsapp"];
/// A pair's app code in the packed form: 0 is "" (no message named one yet), then APPS.
pub const APP_CODES: [&str; 4] = ["", "facebook", "instagram", "whatsapp"];

#[derive(Default)]
pub struct Pair {
    /// `[ts, key]` in ascending `ts`, as `PairState.inbound` and `outbound`.
    pub inbound: Vec<[i64; 2]>,
    pub outbound: Vec<[i64; 2]>,
    pub last_ts: i64,
    pub last_inbound_ts: i64,
    pub last_inbound_key: i64,
    pub app: u8,
    pub due: Option<i64>,
    pub emitted_at: Option<i64>,
    pub queued: Option<i64>,
}

impl Pair {
    pub fn new() -> Self {
        Pair { last_ts: -1, last_inbound_ts: -1, ..Default::default() }
    }

    /// `PairState.add`: keep a message in time order; false if its key is kept already.
    pub fn add(&mut self, ts: i64, key: i64, inbound: bool) -> bool {
        if self.inbound.iter().chain(self.outbound.iter()).any(|m| m[1] == key) {
            return false;
        }
        let kept = if inbound { &mut self.inbound } else { &mut self.outbound };
        let mut at = kept.len();
        if at == 0 || kept[at - 1][0] <= ts {
            kept.push([ts, key]);
            return true;
        }
        while at >= 1 && kept[at - 1][0] > ts {
            at -= 1;
        }
        kept.insert(at, [ts, key]);
        true
    }

    /// How many inbound messages have `since < ts <= until`.
    pub fn inbound_between(&self, since: i64, until: i64) -> i64 {
        let upto = self.inbound.partition_point(|m| m[0] <= until);
        let before = self.inbound.partition_point(|m| m[0] <= since);
        upto as i64 - before as i64
    }

    /// Drop the messages with `ts <= horizon`.
    pub fn forget_until(&mut self, horizon: i64) {
        for kept in [&mut self.inbound, &mut self.outbound] {
            if kept.first().is_some_and(|m| m[0] <= horizon) {
                let end = kept.partition_point(|m| m[0] <= horizon);
                kept.drain(..end);
            }
        }
    }
}

/// What few users have: kept apart, so that a user without them costs one pointer.
#[derive(Default)]
pub struct Rare {
    pub opt_out_bots: BTreeSet<String>,
    pub opt_in_bots: BTreeSet<String>,
    /// bot ("*" for all) -> clock of the opt-in, in insertion order (a Python dict).
    pub opt_in_at: Vec<(String, i64)>,
    pub tz: Option<String>,
}

static NO_RARE: Rare = Rare { opt_out_bots: BTreeSet::new(), opt_in_bots: BTreeSet::new(), opt_in_at: Vec::new(), tz: None };

#[derive(Default)]
pub struct User {
    pub minor: Option<bool>,
    pub opt_out_all: bool,
    pub distress_until: i64,
    pub sends: Vec<i64>,
    /// In insertion order, as a Python dict: the packed form lists them so.
    pub pairs: Vec<(Id, Pair)>,
    rare: Option<Box<Rare>>,
}

impl User {
    pub fn new() -> Self {
        User { distress_until: -1, ..Default::default() }
    }

    pub fn rare(&self) -> &Rare {
        self.rare.as_deref().unwrap_or(&NO_RARE)
    }

    pub fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Default::default)
    }

    pub fn pair_index(&self, bot_id: &str) -> Option<usize> {
        self.pairs.iter().position(|(bot, _)| &**bot == bot_id)
    }

    pub fn opted_out(&self, bot_id: &str) -> bool {
        let rare = self.rare();
        rare.opt_out_bots.contains(bot_id) || (self.opt_out_all && !rare.opt_in_bots.contains(bot_id))
    }

    fn opted_in_at(&self, bot_id: &str) -> i64 {
        let at = |name: &str| self.rare().opt_in_at.iter().find(|(bot, _)| bot == name).map_or(-1, |(_, clock)| *clock);
        at(bot_id).max(at("*"))
    }

    pub fn opt_out(&mut self, bot_id: Option<&str>) {
        match bot_id {
            None => {
                self.opt_out_all = true;
                if let Some(rare) = &mut self.rare {
                    rare.opt_in_bots.clear();
                }
            }
            Some(bot) => {
                let rare = self.rare_mut();
                rare.opt_out_bots.insert(bot.to_owned());
                rare.opt_in_bots.remove(bot);
            }
        }
    }

    pub fn opt_in(&mut self, bot_id: Option<&str>, clock: i64) {
        let name = bot_id.unwrap_or("*");
        let opt_out_all = self.opt_out_all;
        let rare = self.rare_mut();
        match rare.opt_in_at.iter_mut().find(|(bot, _)| bot == name) {
            Some(entry) => entry.1 = clock,
            None => rare.opt_in_at.push((name.to_owned(), clock)),
        }
        match bot_id {
            None => {
                rare.opt_out_bots.clear();
                rare.opt_in_bots.clear();
                self.opt_out_all = false;
            }
            Some(bot) => {
                rare.opt_out_bots.remove(bot);
                if opt_out_all {
                    rare.opt_in_bots.insert(bot.to_owned());
                }
            }
        }
    }

    /// A stop word written to a bot at `ts`: an opt-out, unless an opt-in came after it.
    pub fn stop_word(&mut self, bot_id: &str, ts: i64) -> bool {
        if ts <= self.opted_in_at(bot_id) {
            return false;
        }
        self.opt_out(Some(bot_id));
        true
    }

    pub fn distressed(&mut self, ts: i64, cooloff: i64) {
        self.distress_until = self.distress_until.max(ts + cooloff);
    }

    pub fn age_stops(&self, unknown_age_deny: bool) -> bool {
        self.minor == Some(true) || (self.minor.is_none() && unknown_age_deny)
    }

    /// `UserState.forgettable`.
    pub fn forgettable(&self, clock: i64, window: i64, idle_delay: i64) -> bool {
        let rare = self.rare();
        self.pairs.is_empty() && rare.tz.is_none() && self.minor.is_none() && !self.opt_out_all
            && rare.opt_out_bots.is_empty() && rare.opt_in_bots.is_empty() && self.sends.is_empty()
            && self.distress_until <= clock - window + idle_delay
            && rare.opt_in_at.iter().all(|(_, at)| *at < clock - window)
    }
}

#[derive(Default)]
pub struct Kills {
    pub everything: bool,
    pub bots: BTreeSet<String>,
    pub apps: BTreeSet<String>,
}

impl Kills {
    pub fn stops(&self, bot_id: &str, app: &str) -> Option<String> {
        if self.everything {
            return Some("all follow-ups are killed".to_owned());
        }
        if self.bots.contains(bot_id) {
            return Some(format!("bot {bot_id} is killed"));
        }
        if self.apps.contains(app) {
            return Some(format!("app {app} is killed"));
        }
        None
    }
}
