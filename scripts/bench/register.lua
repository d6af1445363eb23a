-- wrk script: every request registers a new schema under a new subject, so each one is a
-- real write through the _schemas log (re-registering an existing schema would be a read).
local counter = 0

function setup(thread)
    thread:set("prefix", tostring(math.random(1, 1000000000)))
end

function request()
    counter = counter + 1
    local name = "R" .. prefix .. "_" .. counter
    local body = '{"schema":"{\\"type\\":\\"record\\",\\"name\\":\\"' .. name .. '\\",\\"fields\\":[]}"}'
    return wrk.format("POST", "/subjects/bench-" .. name .. "/versions",
        { ["Content-Type"] = "application/vnd.schemaregistry.v1+json" }, body)
end
