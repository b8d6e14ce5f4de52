import CloudAgentTestSupport
import CloudAgentCore
@testable import CloudAgentEngine
@testable import CloudAgentServer
import Testing

@Suite("Other nodes' notices merged per session")
struct NodeBacklogTests {
    @Test("event ranges merge into one, a runtime hosted here is remembered, a deletion wins; an empty backlog has no work")
    func merging() {
        var backlog = NodeCoordinator.Backlog()
        #expect(!backlog.hasWork)
        backlog.merge(ChangeNotice(node: "b", sessionId: "s", firstEventId: 5, lastEventId: 7, host: "b", runtime: "running"), here: "a")
        backlog.merge(ChangeNotice(node: "b", sessionId: "s", firstEventId: 8, lastEventId: 12), here: "a")
        backlog.merge(ChangeNotice(node: "c", sessionId: "s", firstEventId: 3, lastEventId: 4), here: "a")
        #expect(backlog.hasWork)
        #expect(backlog.firstEventId == 3 && backlog.lastEventId == 12)
        #expect(!backlog.runtimeHere && !backlog.deleted)
        backlog.merge(ChangeNotice(node: "b", sessionId: "s", host: "a", runtime: "stopping"), here: "a")
        #expect(backlog.runtimeHere)
        backlog.merge(ChangeNotice(node: "b", sessionId: "s", host: "a", runtime: "deleted"), here: "a")
        #expect(backlog.deleted && backlog.deletedHere)
        var elsewhere = NodeCoordinator.Backlog()
        elsewhere.merge(ChangeNotice(node: "b", sessionId: "s", host: "b", runtime: "deleted"), here: "a")
        #expect(elsewhere.deleted && !elsewhere.deletedHere)
    }
}
