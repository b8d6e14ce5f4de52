import CloudAgentTestSupport
import CloudAgentCore
import Foundation
import Testing

@testable import CloudAgentModelServer

@Suite struct ModelScriptTests {
    func parse(_ json: String) throws(ScriptError) -> ModelScript {
        try ModelScript(json: Data(json.utf8))
    }

    @Test func readsEveryKindOfTurn() throws {
        let script = try parse(
            """
            {"turns": [
              {"shell": "echo hi > hello.txt", "description": "Write hello.txt", "text": "Writing."},
              {"tool": {"name": "Write", "input": {"file_path": "a.txt", "content": "x"}}},
              {"text": "slow", "delayMs": 50, "chunkDelayMs": 200},
              {"error": {"status": 529, "message": "Overloaded", "inStream": true, "retryable": true}, "times": 3},
              {"text": "Done."}
            ],
            "defaultText": "Nothing left.", "auxiliaryText": "A title"}
            """)
        #expect(
            script.turns == [
                ScriptTurn(.shell(command: "echo hi > hello.txt", description: "Write hello.txt"), text: "Writing."),
                ScriptTurn(.tool(name: "Write", input: ["file_path": "a.txt", "content": "x"])),
                ScriptTurn(.text, text: "slow", delay: .milliseconds(50), chunkDelay: .milliseconds(200)),
                ScriptTurn(.error(ScriptedError(status: 529, message: "Overloaded", inStream: true, retryable: true)), times: 3),
                .text("Done."),
            ])
        #expect(script.defaultText == "Nothing left.")
        #expect(script.auxiliaryText == "A title")
    }

    @Test func aBareArrayIsTheTurns() throws {
        let script = try parse(#"[{"shell": "ls"}, {"text": "Listed."}]"#)
        #expect(script.turns == [.shell("ls"), .text("Listed.")])
        #expect(script.defaultText == ModelScript.standardDefaultText)
    }

    @Test(arguments: [
        (#"{"turns": [{"shell": "ls", "tool": {"name": "x"}}]}"#, "turn 0: a turn has at most one of shell, tool, error (found shell, tool)"),
        (#"{"turns": [{}]}"#, "turn 0: a turn needs text, shell, tool or error"),
        (#"{"turns": [{"text": "a", "colour": "red"}]}"#, "turn 0: unknown turn field 'colour'"),
        (#"{"turns": [{"text": "a"}, {"error": {"status": 200}}]}"#, "turn 1: 'error.status' must be 400…599"),
        (#"{"turns": [{"text": "a", "times": 0}]}"#, "turn 0: 'times' must be a whole number ≥ 1"),
        (#"{"turns": [{"tool": {"input": {}}}]}"#, #"turn 0: 'tool' must be {"name": string, "input": object}"#),
        (#"{"turns": [{"error": {"status": 500}, "text": "x"}]}"#, "turn 0: an error turn has no text"),
        (#"{"steps": []}"#, "unknown script field 'steps'"),
        (#""hello""#, "the script must be a JSON object or an array of turns"),
    ])
    func rejectsAMalformedScriptNamingTheProblem(json: String, message: String) {
        #expect(throws: ScriptError(message)) { try parse(json) }
    }

    @Test func anErrorTurnDefaultsToA500ThatIsNotRetried() throws {
        let script = try parse(#"[{"error": {}}]"#)
        #expect(script.turns == [ScriptTurn(.error(ScriptedError(status: 500, message: "Scripted model error")))])
    }
}

@Suite struct ScriptPlayerTests {
    let bash = OfferedTool(name: "Bash", kind: .function, parameters: ["type": "object", "properties": ["command": ["type": "string"]]])

    func mainRequest() -> ModelRequest {
        ModelRequest(api: .anthropicMessages, model: "m", stream: true, tools: [bash], messages: [])
    }

    func auxiliaryRequest() -> ModelRequest {
        ModelRequest(api: .anthropicMessages, model: "haiku", stream: false, tools: [], messages: [])
    }

    @Test func mainRequestsTakeTheTurnsInOrderThenGetTheDefaultText() {
        var player = ScriptPlayer(script: ModelScript(turns: [.shell("ls"), .text("Listed.")], defaultText: "No more."))
        let first = player.reply(to: mainRequest())
        #expect(first.turn == 0)
        #expect(first.reply == .message(AssistantMessage(toolCall: ModelToolCall(name: "Bash", input: .arguments(["command": "ls"])))))
        #expect(player.reply(to: mainRequest()) == (.message(AssistantMessage(text: "Listed.")), 1))
        #expect(player.reply(to: mainRequest()) == (.message(AssistantMessage(text: "No more.")), nil))
        #expect(player.position == 2)
    }

    @Test func auxiliaryRequestsDoNotTakeATurn() {
        var player = ScriptPlayer(script: ModelScript(turns: [.text("Main.")], auxiliaryText: "Aux."))
        #expect(player.reply(to: auxiliaryRequest()) == (.message(AssistantMessage(text: "Aux.")), nil))
        #expect(player.reply(to: auxiliaryRequest()).turn == nil)
        #expect(player.reply(to: mainRequest()) == (.message(AssistantMessage(text: "Main.")), 0))
    }

    @Test func aTurnWithTimesAnswersThatManyMainRequests() {
        let error = ScriptedError(status: 400, message: "Bad")
        var player = ScriptPlayer(script: ModelScript(turns: [ScriptTurn(.error(error), times: 3), .text("After.")]))
        for _ in 0..<3 { #expect(player.reply(to: mainRequest()) == (.failure(error, delay: .zero), 0)) }
        #expect(player.reply(to: mainRequest()) == (.message(AssistantMessage(text: "After.")), 1))
    }

    @Test func theRecordSaysWhatEachRequestWasAnswered() async throws {
        let model = try ScriptedModel(script: ModelScript(turns: [.shell("ls"), ScriptTurn(.error(ScriptedError(status: 529, message: "x")))]))
        _ = await model.answer(auxiliaryRequest(), method: "POST", path: "/v1/messages")
        _ = await model.answer(mainRequest(), method: "POST", path: "/v1/messages?beta=true")
        _ = await model.answer(mainRequest(), method: "POST", path: "/v1/messages")
        _ = await model.answer(mainRequest(), method: "POST", path: "/v1/messages")
        await model.recordOther(method: "HEAD", path: "/api/hello", reply: "probe")
        let records = await model.requests
        #expect(records.map(\.reply) == ["auxiliary", "tool:Bash", "error:529", "default", "probe"])
        #expect(records.map(\.turn) == [nil, 0, 1, nil, nil])
        #expect(records.map(\.index) == [1, 2, 3, 4, 5])
        #expect(records[1].path == "/v1/messages?beta=true")
    }

    @Test func theRecordFileGetsOneJSONLinePerRequest() async throws {
        let directory = try makeTemporaryDirectory("record")
        defer { try? FileManager.default.removeItem(at: directory) }
        let url = directory.appendingPathComponent("requests.jsonl")
        let model = try ScriptedModel(script: ModelScript(turns: [.text("Hi.")]), recordURL: url)
        var request = mainRequest()
        request.messages = [["role": "user", "content": "hello"]]
        request.conversationID = "conversation-1"
        _ = await model.answer(request, method: "POST", path: "/v1/messages")
        await model.recordOther(method: "GET", path: "/v1/models", reply: "models")
        let lines = try String(contentsOf: url, encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 2)
        let first = try JSONDecoder().decode(RecordedRequest.self, from: Data(lines[0].utf8))
        #expect(first.messages == [["role": "user", "content": "hello"]])
        #expect(first.tools == ["Bash"])
        #expect(first.conversationId == "conversation-1")
        #expect(first.api == .anthropicMessages)
        #expect(first.main)
    }
}
