# The OSC bridge across a server's sandbox wall (see renderer/sandbox.py).
#
# Inside the sandbox the Sonic Pi server and scsynth listen on the sandbox's own
# loopback, which the renderer cannot reach. This bridge joins it to two Unix datagram
# sockets in the sandbox's bind-mounted scratch folder:
#   <dir>/server.sock    bound here; the renderer sends to it. The first byte of each
#                        datagram names the target ("s": the Sonic Pi server, "c":
#                        scsynth), the rest is the OSC packet.
#   <dir>/renderer.sock  bound by the renderer; everything that arrives on the GUI port
#                        (the server's messages, scsynth's replies) is sent there.
# Packets to targets leave from the GUI port's socket, so that scsynth's replies come
# back to it. A datagram that cannot be delivered is dropped, as UDP would drop it.
#
#   ruby osc_bridge.rb DIR SERVER_PORT SCSYNTH_PORT GUI_PORT
require "socket"

dir, server_port, scsynth_port, gui_port = ARGV[0], *ARGV[1..3].map(&:to_i)
targets = { "s" => server_port, "c" => scsynth_port }
# Sonic Pi reads at most 16,384 bytes of a message; the renderer sends no more than that
MAX_DATAGRAM = 262_144

gui = UDPSocket.new
gui.bind("127.0.0.1", gui_port)
inbox = Socket.new(:UNIX, :DGRAM)
inbox.bind(Socket.sockaddr_un(File.join(dir, "server.sock")))
outbox = Socket.new(:UNIX, :DGRAM)
renderer = Socket.sockaddr_un(File.join(dir, "renderer.sock"))

Thread.new do
  loop do
    packet = inbox.recv(MAX_DATAGRAM)
    port = targets[packet[0]]
    begin
      gui.send(packet[1..], 0, "127.0.0.1", port) if port
    rescue SystemCallError
    end
  end
end

loop do
  packet = gui.recv(MAX_DATAGRAM)
  begin
    outbox.send(packet, 0, renderer)
  rescue SystemCallError
  end
end
