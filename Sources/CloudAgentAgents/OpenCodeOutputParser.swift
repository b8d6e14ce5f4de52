import CloudAgentProtocol

/// OpenCode's and Kilo CLI's `run --format json` (Kilo is a fork of OpenCode and prints the same
/// lines): each line `{"type", "timestamp", "sessionID", …}`, as OpenCode's `run` command emits them
/// (packages/opencode/src/cli/cmd/run.ts):
///
/// - `step_start` / `step_finish` `{part: {type: "step-start"|"step-finish", reason?}}` → `log`
/// - `text` `{part: {type: "text", text}}` → `text`
/// - `reasoning` `{part: {text}}` → `log`
/// - `tool_use` `{part: {type: "tool", tool, callID, state: {status: "completed"|"error", input,
///   output?, error?, title?}}}` → `tool`
/// - `error` `{error: {name, data: {message}}}` → `error`, and the outcome: failed with that message
///
/// `sessionID` is the conversation id (`run --session ID` continues it).
public struct OpenCodeOutputParser: AgentOutputParser {
    public private(set) var conversationId: String?
    public private(set) var outcome: AgentOutcome?

    public init() {}

    public mutating func parse(line: String) -> [AgentOutputItem] {
        guard let object = AgentEventData.object(line) else { return [.output] }
        if let session = object["sessionID"]?.stringValue, !session.isEmpty { conversationId = session }
        let part = object["part"]
        switch object["type"]?.stringValue {
        case "text":
            guard let text = part?["text"]?.stringValue, !text.isEmpty else { return [] }
            return [.agent(AgentEventData.text(text, raw: line))]
        case "reasoning":
            let text = part?["text"]?.stringValue ?? ""
            return [.agent(AgentEventData.log("reasoning: \(AgentEventData.tail(text, limit: 500))", raw: line))]
        case "tool_use":
            let state = part?["state"]
            let failed = state?["status"]?.stringValue == "error"
            let output = failed ? state?["error"]?.flattenedText : state?["output"]?.stringValue
            return [.agent(AgentEventData.tool(
                name: part?["tool"]?.stringValue ?? "tool", input: AgentEventData.summary(of: state?["input"]),
                output: output ?? "", status: failed ? "failed" : "completed",
                id: part?["callID"]?.stringValue ?? part?["id"]?.stringValue, raw: line
            ))]
        case "step_start":
            return [.agent(AgentEventData.log("step started", raw: line))]
        case "step_finish":
            let reason = part?["reason"]?.stringValue.map { " (\($0))" } ?? ""
            return [.agent(AgentEventData.log("step finished\(reason)", raw: line))]
        case "error":
            let error = object["error"]
            let message = error?["data"]?["message"]?.stringValue ?? error?["message"]?.stringValue
                ?? error?["name"]?.stringValue ?? "error"
            outcome = .failed(message)
            return [.agent(AgentEventData.error(message, raw: line))]
        default:
            return [.agent(AgentEventData.log(line, raw: line))]
        }
    }
}
