// node-postgres through pgwarden: plain, parameterized and named queries, transactions, a pool; prints JSON.
"use strict";
const { Client, Pool } = require("pg");

const connectionString = process.argv[2];
const table = process.argv[3];

async function main() {
  const out = {};
  const client = new Client({ connectionString, connectionTimeoutMillis: 10000 });
  await client.connect();
  try {
    let r = await client.query("SELECT 1 + 1 AS two, 'héllo' AS greeting, NULL::int AS nothing");
    out.plain = r.rows[0];
    r = await client.query("SELECT $1::int * 2 AS doubled, $2::text AS echoed, $3::numeric AS num", [21, "✓", "1.50"]);
    out.parameterized = r.rows[0];
    out.named = [];
    for (let i = 0; i < 8; i++) {
      r = await client.query({ name: "pgw-triple", text: "SELECT $1::int * 3 AS v", values: [i] });
      out.named.push(r.rows[0].v);
    }
    try {
      await client.query("SELECT 1/0");
    } catch (e) {
      out.error = e.code;
    }
    out.after_error = (await client.query("SELECT 'usable' AS s")).rows[0].s;

    await client.query("BEGIN");
    await client.query(`INSERT INTO ${table} (id, name) VALUES ($1, $2)`, [1, "rolled back"]);
    await client.query("ROLLBACK");
    await client.query("BEGIN");
    await client.query(`INSERT INTO ${table} (id, name) VALUES ($1, $2)`, [2, "kept"]);
    await client.query({ name: "pgw-insert", text: `INSERT INTO ${table} (id, name) VALUES ($1, $2)`, values: [3, "named"] });
    out.inside = (await client.query(`SELECT count(*)::int AS n FROM ${table}`)).rows[0].n;
    await client.query("COMMIT");
    r = await client.query(`SELECT id, name FROM ${table} ORDER BY id`);
    out.committed = r.rows;
  } finally {
    await client.end();
  }

  // No more connections than pgwarden has backends: in session mode extra ones would wait.
  const pool = new Pool({ connectionString, max: 8 });
  try {
    const jobs = [];
    for (let i = 0; i < 60; i++) {
      jobs.push(pool.query({ name: `pgw-pool-${i % 3}`, text: `SELECT $1::int + ${i % 3} AS v`, values: [i] }));
    }
    out.pool = (await Promise.all(jobs)).map((res) => res.rows[0].v);
  } finally {
    await pool.end();
  }
  return out;
}

main().then(
  (out) => console.log(JSON.stringify(out)),
  (err) => { console.error(err); process.exit(1); },
);
