-- Edits and redactions rewrite a message's preview in place. None of the columns they change is
-- indexed, so PostgreSQL can make the new row version a HOT update (no new entry in any of the
-- six indexes of `messages`) if the page the row lives on has room for it. With the default
-- fillfactor (100) new messages fill their pages to the brim, so every edit of a recent
-- message moved to another page and wrote six index entries. Leaving a tenth of each new page
-- free keeps those versions on their page. A storage parameter only: columns, types, uniques and
-- indexes (the ERD) are unchanged, existing pages are not rewritten, and the lock it takes
-- (SHARE UPDATE EXCLUSIVE) does not block reads or writes.
ALTER TABLE messages SET (fillfactor = 90);
