"""The claim kinds, one module per family; each module exports `CLAIMS`, a tuple of records
(`bnstudy.claims.record.Claim`). Every module here is loaded by the registry: a new family is a
new module, a new claim kind a new record in one of them."""
