-- The table the bundled pg-sync plugin mirrors app.users into (deploy/compose.yaml).
create table if not exists users (id text primary key, email text, name text, doc jsonb);
