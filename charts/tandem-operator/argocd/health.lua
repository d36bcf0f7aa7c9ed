-- Argo CD health check for automation.tandem.dev/AutomationRun.
--
-- Install it under argocd-cm key
--   resource.customizations.health.automation.tandem.dev_AutomationRun
-- (docs/gitops.md). Argo CD runs it with gopher-lua (Lua 5.1); `obj` is the live object.
--
--   no status yet                    -> Progressing  "Waiting for the operator"
--   spec not yet observed            -> Progressing  (status.observedGeneration < metadata.generation)
--   Queued, Running, Pausing         -> Progressing
--   Paused, AwaitingApproval         -> Suspended    (waits for a person: resume, gate decision, quota override, recover)
--   Completed                        -> Healthy
--   Failed, Blocked, Cancelled       -> Degraded     (ended without its result; Succeeded=False)
--   being deleted                    -> Progressing  "Pending deletion"
--   a phase this script does not know -> Unknown
local hs = {}

if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Pending deletion"
  return hs
end

local status = obj.status
if status == nil or status.phase == nil or status.phase == "" then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator"
  return hs
end

local phase = status.phase
local detail = status.detail
local function describe(text)
  if text ~= nil and text ~= "" then
    return phase .. ": " .. text
  end
  return phase
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
    .. " (observed " .. tostring(status.observedGeneration) .. ")"
  return hs
end

if phase == "Queued" or phase == "Running" or phase == "Pausing" then
  hs.status = "Progressing"
  hs.message = describe(detail)
elseif phase == "Paused" then
  hs.status = "Suspended"
  hs.message = describe(status.pauseReason or detail)
elseif phase == "AwaitingApproval" then
  hs.status = "Suspended"
  hs.message = describe(detail)
elseif phase == "Completed" then
  hs.status = "Healthy"
  hs.message = describe(detail)
elseif phase == "Failed" or phase == "Blocked" or phase == "Cancelled" then
  hs.status = "Degraded"
  hs.message = describe(detail or status.stopReason)
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
