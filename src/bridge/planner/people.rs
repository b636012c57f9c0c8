//! The people a batch meets: their `users` row ids, loaded beforehand or planned as new rows
//! (one per person however often the batch names them).

use foldhash::HashMap;
use ruma::{OwnedUserId, UserId};

use crate::model::ids::UserRowId;

/// Known `users` rows of the batch's people, and the ones the batch creates.
pub(super) struct People {
    rows: HashMap<OwnedUserId, UserRowId>,
    new: Vec<(OwnedUserId, UserRowId)>,
}

impl People {
    /// Starts from the rows loaded for the transaction.
    pub(super) fn new(rows: HashMap<OwnedUserId, UserRowId>) -> Self {
        Self {
            rows,
            new: Vec::new(),
        }
    }

    /// The row id of `user`, planning its insert when it has none yet.
    pub(super) fn person(&mut self, user: &UserId) -> UserRowId {
        if let Some(id) = self.rows.get(user) {
            return *id;
        }
        let id = UserRowId::new();
        self.rows.insert(user.to_owned(), id);
        self.new.push((user.to_owned(), id));
        id
    }

    /// The row id of `user` if it has one (loaded or planned); never plans one.
    pub(super) fn row(&self, user: &UserId) -> Option<UserRowId> {
        self.rows.get(user).copied()
    }

    /// The rows the batch creates, in the order first met.
    pub(super) fn into_new(self) -> Vec<(OwnedUserId, UserRowId)> {
        self.new
    }
}
