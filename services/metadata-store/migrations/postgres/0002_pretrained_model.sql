-- The pretrained model a run built on (`<name>@<digest>`), empty for none.
ALTER TABLE runs ADD COLUMN pretrained_model TEXT NOT NULL DEFAULT '';
