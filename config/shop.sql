-- The example shop schema used by config/policies/shop.yaml and docs/policies.md.
create table customers (id int primary key, tenant_id text not null, name text,
                        email text unique, ssn text, phone text, born date);
create table orders (id int primary key, tenant_id text not null, customer_id int,
                     total numeric(10,2));
create table countries (code text primary key, name text);
create table secrets (id int, tenant_id text, secret text);
insert into customers values
  (1, 'acme', 'Ann', 'ann@acme.io', '111-11-1111', '555-0101', '1980-05-17'),
  (2, 'acme', 'Bob', 'bob@acme.io', '222-22-2222', '555-0102', '1990-01-02'),
  (3, 'globex', 'Gus', 'gus@globex.io', '333-33-3333', '555-0103', '1975-12-31');
insert into orders values (10, 'acme', 1, 100.00), (11, 'acme', 2, 50.50), (12, 'globex', 3, 999.99);
insert into countries values ('us', 'United States'), ('fr', 'France');
insert into secrets values (1, 'acme', 's3cr3t');

-- The role pgwarden logs policed sessions in as (backend_auth.policed in config/pgwarden-shop.yaml),
-- as written by: pgwarden init --policy config/policies/shop.yaml --role shop_policed --database shop
-- the role pgwarden's policed sessions log in as (backend_auth.policed.user)
CREATE ROLE shop_policed LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION NOINHERIT;
-- give it a password for md5 or SCRAM backends: \password shop_policed

-- in database shop
GRANT CONNECT ON DATABASE shop TO shop_policed;
GRANT USAGE ON SCHEMA public TO shop_policed;
GRANT SELECT ON TABLE public.countries TO shop_policed;
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE public.customers TO shop_policed;
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE public.orders TO shop_policed;
DO $$ DECLARE s text; BEGIN
  FOR s IN SELECT d.objid::regclass::text FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
    WHERE c.relkind = 'S' AND d.deptype IN ('a', 'i') AND d.refobjid IN (SELECT unnest(ARRAY['public.customers', 'public.orders'])::regclass)
  LOOP EXECUTE format('GRANT USAGE ON SEQUENCE %s TO %I', s, 'shop_policed'); END LOOP;
END $$;
-- PostgreSQL 14 and older let PUBLIC create objects in schema public, and pgwarden
-- refuses a role that can: REVOKE CREATE ON SCHEMA public FROM PUBLIC;
-- PostgreSQL lets PUBLIC (so this role too) execute every function; pgwarden refuses
-- user functions not in functions.allow. Revoking PUBLIC's EXECUTE would also take it
-- from every other role and break column defaults and checks that call them, so it is
-- left to you: REVOKE EXECUTE ON FUNCTION <schema.function> FROM PUBLIC;
