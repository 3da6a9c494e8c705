from compressor.worldmodel.cli import main

main()
