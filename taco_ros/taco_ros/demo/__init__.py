"""The demo: a synthetic bag through taco_node (:mod:`.run`) and its pictures and table (:mod:`.report`)."""
