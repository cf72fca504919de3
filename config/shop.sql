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
