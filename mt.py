import paho.mqtt.client as mqtt, time, sys
n=int(sys.argv[1])
got=[]
c=mqtt.Client(client_id="s1", transport="websockets")
c.on_message=lambda c,u,m: got.append(len(m.payload))
c.connect("127.0.0.1",18841); c.loop_start(); c.subscribe("a/#",1); time.sleep(0.3)
p=mqtt.Client(client_id="p1"); p.connect("127.0.0.1",18840); p.loop_start()
p.publish("a/b",b"x"*n,qos=1).wait_for_publish(); time.sleep(1); print(n, got)
